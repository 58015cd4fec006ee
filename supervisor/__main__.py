"""`python -m supervisor`: run the supervisor in the foreground until stopped."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from roxi_mp import config
from roxi_mp.errors import RoxiError

from .arbiter import Arbiter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m supervisor")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--config", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("ROXI_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s supervisor[%(process)d] %(levelname)s %(message)s")
    try:
        cfg = config.load(args.config, data_dir=args.data_dir)
        return Arbiter(cfg).run()
    except RoxiError as exc:
        print(f"roxi: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
