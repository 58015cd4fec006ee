"""Giving memory back to the OS, and measuring what a process holds.

`release()` is what deep sleep ends with: a full garbage collection, then glibc's
`malloc_trim(0)`, which returns free heap pages (including those inside arenas that
`free()` keeps for reuse) to the kernel; `drop_file_pages()` then lets go of the clean pages of
the shared libraries (faiss, numpy, OpenBLAS, libpython ...): they stay in the page cache,
shared and reclaimable, and come back by a minor fault when touched. RSS counts a file page
once it is mapped into the process, and how many pages the kernel maps around each fault
depends on how much of the file happens to be cached: on a fresh install (every library just
written, all of it cached) the query server asleep measured 69 MB, on an older one 53 MB,
the same code (issue 22). `mapped()` reads /proc/PID/smaps so the supervisor
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
#: madvise(2): the range is not needed now; a file page is mapped again, from the page
#: cache, when next touched (for a private mapping only right for pages never written)
MADV_DONTNEED = 4


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return _libc


def malloc_trim() -> bool:
    """Return free heap pages to the OS (glibc); False where there is no such call."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        _c().malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def clean_file_mappings(smaps: str) -> list[tuple[int, int, int]]:
    """(start, end, resident bytes) of the mappings in an smaps text that are read-only,
    backed by a file, and hold no anonymous page: only pages the file still holds as they
    are (a relocated read-only segment, written before it was protected, holds anonymous
    pages and is left alone; so is every writable mapping)."""
    out, current = [], None
    for line in smaps.splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            path = fields[5] if len(fields) >= 6 else ""
            current = [start, end, 0, 0] if fields[1][1] == "-" and path.startswith("/") else None
            if current is not None:
                out.append(current)
        elif current is not None and fields and fields[0] == "Rss:":
            current[2] = int(fields[1]) * 1024
        elif current is not None and fields and fields[0] == "Anonymous:":
            current[3] = int(fields[1]) * 1024
    return [(start, end, rss) for start, end, rss, anon in out if anon == 0 and rss > 0]


def drop_file_pages() -> int:
    """Let go of the resident pages of this process's clean read-only file mappings (see the
    module docstring); the bytes let go of (0 where there is no such call)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        with open("/proc/self/smaps") as f:
            mappings = clean_file_mappings(f.read())
        libc = _c()
    except (OSError, AttributeError):
        return 0
    dropped = 0
    for start, end, rss in mappings:
        if libc.madvise(start, end - start, MADV_DONTNEED) == 0:  # EINVAL for a locked one: kept
            dropped += rss
    return dropped


def release(*, file_pages: bool = False) -> None:
    """A full collection and malloc_trim; with `file_pages`, drop_file_pages too (deep sleep:
    the next touches of the libraries' code cost minor faults)."""
    gc.collect()
    malloc_trim()
    if file_pages:
        drop_file_pages()


@dataclass(frozen=True)
class Mapped:
    size: int  # bytes of address space mapping the file
    rss: int  # bytes of it resident


def mapped(pid: int, path: Path | str) -> Mapped:
    """How much of `path` process `pid` maps, from /proc/PID/smaps (zero if none or unknown)."""
    target = str(path)
    return mapped_where(pid, lambda name: name == target)


def _mapped_path(line: str) -> str | None:
    """The path of a mapping's header line of /proc/PID/maps or smaps ("(deleted)" removed)."""
    fields = line.rstrip("\n").split(None, 5)
    return fields[5].removesuffix(" (deleted)") if len(fields) == 6 else None


def mapped_where(pid: int, match: Callable[[str], bool]) -> Mapped:
    """How much of the files whose path `match`es process `pid` maps, from /proc/PID/smaps
    (a deleted file counts under its old path; zero if none or unknown).

    /proc/PID/maps is read first: smaps walks the page tables of every mapping, the shared
    libraries' included, and a process mapping none of the files (the query server asleep,
    which the supervisor asks about at each status) need not pay that."""
    try:
        with open(f"/proc/{pid}/maps") as fh:
            if not any((path := _mapped_path(line)) is not None and match(path) for line in fh):
                return Mapped(0, 0)
    except OSError:
        return Mapped(0, 0)
    size = rss = 0
    current = False
    try:
        with open(f"/proc/{pid}/smaps") as fh:
            for line in fh:
                head = line.split(None, 1)[0]
                if not head.endswith(":") or "-" in head:  # a mapping's header line
                    current = (path := _mapped_path(line)) is not None and match(path)
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
