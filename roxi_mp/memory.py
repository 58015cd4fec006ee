"""Giving memory back to the OS, and measuring what a process holds.

`release()` is what deep sleep ends with: a full garbage collection, then glibc's
`malloc_trim(0)`, which returns free heap pages (including those inside arenas that
`free()` keeps for reuse) to the kernel. `mapped()` reads /proc/PID/smaps so the supervisor
can report a role's mapping of the vectors file without asking, let alone waking, the role.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

_libc = None


def malloc_trim() -> bool:
    """Return free heap pages to the OS (glibc); False where there is no such call."""
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _libc.malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def release() -> None:
    gc.collect()
    malloc_trim()


@dataclass(frozen=True)
class Mapped:
    size: int  # bytes of address space mapping the file
    rss: int  # bytes of it resident


def mapped(pid: int, path: Path | str) -> Mapped:
    """How much of `path` process `pid` maps, from /proc/PID/smaps (zero if none or unknown)."""
    target = str(path)
    return mapped_where(pid, lambda name: name == target)


def mapped_where(pid: int, match: Callable[[str], bool]) -> Mapped:
    """How much of the files whose path `match`es process `pid` maps, from /proc/PID/smaps
    (a deleted file counts under its old path; zero if none or unknown)."""
    size = rss = 0
    current = False
    try:
        with open(f"/proc/{pid}/smaps") as fh:
            for line in fh:
                head = line.split(None, 1)[0]
                if not head.endswith(":") or "-" in head:  # a mapping's header line
                    fields = line.rstrip("\n").split(None, 5)
                    current = len(fields) == 6 and match(fields[5].removesuffix(" (deleted)"))
                elif current and head == "Size:":
                    size += int(line.split()[1]) * 1024
                elif current and head == "Rss:":
                    rss += int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return Mapped(0, 0)
    return Mapped(size, rss)


def maps_file(pid: int, path: Path | str) -> bool:
    """True while `path` appears in /proc/PID/maps."""
    try:
        with open(f"/proc/{pid}/maps") as fh:
            return any(line.rstrip("\n").endswith(str(path)) for line in fh)
    except OSError:
        return False
