"""`python -m supervisor`: run the supervisor in the foreground until stopped."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

from roxi_mp import config
from roxi_mp.errors import RoxiError
from roxi_mp.process import child_parser

from .arbiter import Arbiter


def setup_logging(cfg: config.Config, *, stream) -> None:
    """Records go to the rotating data/logs/supervisor.log and to `stream`."""
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s supervisor[%(process)d] %(levelname)s %(message)s")
    handlers: list[logging.Handler] = [logging.handlers.RotatingFileHandler(
        cfg.log_dir / "supervisor.log", maxBytes=cfg.supervisor.log_max_bytes,
        backupCount=cfg.supervisor.log_backups)]
    if stream is not None:
        handlers.append(logging.StreamHandler(stream))
    root = logging.getLogger()
    root.setLevel(os.environ.get("ROXI_LOG_LEVEL", "INFO"))
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)


def run_foreground(cfg: config.Config, *, quiet: bool = False) -> int:
    arbiter = Arbiter(cfg)
    arbiter.acquire()  # a refused second supervisor must not write into the first one's log
    setup_logging(cfg, stream=None if quiet else sys.stderr)
    return arbiter.run()


def main(argv: list[str] | None = None) -> int:
    parser = child_parser("supervisor")
    parser.add_argument("--quiet", action="store_true", help="log to data/logs only, not stderr")
    args = parser.parse_args(argv)
    try:
        cfg = config.load(args.config, data_dir=args.data_dir)
        return run_foreground(cfg, quiet=args.quiet)
    except RoxiError as exc:
        print(f"roxi: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
