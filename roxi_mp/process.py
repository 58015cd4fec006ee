"""What every child process of roxi-mp shares: dying with its parent, and its command line.

Roles, the query model process, the index build and the backup job are all started as
`python -m roxi_mp.<module> --data-dir D --config C ...` (Config.to_argv), never by fork.
Each one dies with the process that started it (PR_SET_PDEATHSIG), so a killed supervisor
or indexer leaves no orphans behind.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import signal
import subprocess
import sys

#: prctl option: the signal the kernel sends this process when its parent exits
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` to this process when its parent exits (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def child_parser(module: str) -> argparse.ArgumentParser:
    """The parser of `python -m <module>`: --data-dir and --config (Config.to_argv's flags);
    the caller adds its own arguments."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--config", default=None)
    return parser


def end_child(proc: subprocess.Popen, *, timeout: float = 5.0) -> None:
    """Stop a child process still running: SIGTERM, then SIGKILL after `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
