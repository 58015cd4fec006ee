"""`python -m roxi_mp.backup_job --kind K`: one backup and a prune, as a child of the supervisor.

Scheduled and milestone backups run in their own short-lived process so that copying a
large vectors file never stalls the supervisor's loop. The job dies with the supervisor
(PR_SET_PDEATHSIG, like the roles); an interrupted backup leaves only a `.partial`
directory, which the next backup removes. It prints one JSON line with the result.
"""

from __future__ import annotations

import json
import sys

from . import config as config_mod
from . import operations
from .errors import RoxiError
from .process import child_parser, die_with_parent


def main(argv: list[str] | None = None) -> int:
    parser = child_parser("roxi_mp.backup_job")
    parser.add_argument("--kind", choices=("manual", "scheduled", "milestone"), default="scheduled")
    args = parser.parse_args(argv)
    die_with_parent()
    try:
        cfg = config_mod.load(args.config, data_dir=args.data_dir)
        path, removed = operations.backup(cfg, kind=args.kind)
    except RoxiError as exc:
        print(json.dumps({"ok": False, "error": str(exc)}))
        return exc.exit_code
    print(json.dumps({"ok": True, "path": str(path), "pruned": [str(p) for p in removed]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
