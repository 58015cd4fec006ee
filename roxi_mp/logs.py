"""Role log files: size-rotated writing (supervisor side) and tail/follow (CLI side).

Children write stdout and stderr to a pipe that the supervisor drains into
`<data_dir>/logs/<name>.log`, so a log can be rotated by size under a running child
(a child writing to the file itself could not be rotated without its help), and a traceback
printed before logging was set up is captured like everything else.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterator

#: rotate a log when it would grow past this, bytes
MAX_BYTES = 10 * 1024 * 1024
#: rotated files kept: <name>.log.1 (newest) .. <name>.log.N
BACKUPS = 3


class RotatingLog:
    """Append-only log file that rotates by size: name.log -> name.log.1 -> ... -> name.log.N."""

    def __init__(self, path: Path, *, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.fh = open(path, "ab")
        self.size = self.fh.tell()

    def write(self, data: bytes) -> None:
        if self.size and self.size + len(data) > self.max_bytes:
            self.rotate()
        self.fh.write(data)
        self.fh.flush()
        self.size += len(data)

    def rotate(self) -> None:
        self.fh.close()
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self.fh = open(self.path, "ab")
        self.size = 0

    def close(self) -> None:
        self.fh.close()


def tail(path: Path, lines: int = 50) -> list[str]:
    """The last `lines` lines of a log file (reads only the end of a large file)."""
    if lines <= 0:
        return []
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            end = fh.tell()
            block = 8192
            data = b""
            while end > 0 and data.count(b"\n") <= lines:
                start = max(0, end - block)
                fh.seek(start)
                data = fh.read(end - start) + data
                end = start
                block *= 2
    except FileNotFoundError:
        return []
    return data.decode(errors="replace").splitlines()[-lines:]


def follow(path: Path, *, poll: float = 0.2, stop: Callable[[], bool] = lambda: False) -> Iterator[str]:
    """Yield lines appended to `path` from now on, across rotations, until stop() is true."""
    fh = None
    inode = None
    pending = b""
    from_start = False  # the first file is followed from its end, like tail -f
    while not stop():
        if fh is None:
            try:
                fh = open(path, "rb")
            except FileNotFoundError:
                from_start = True
                time.sleep(poll)
                continue
            inode = os.fstat(fh.fileno()).st_ino
            if not from_start:
                fh.seek(0, os.SEEK_END)
        chunk = fh.read(65536)
        if chunk:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line.decode(errors="replace")
            continue
        try:
            rotated = os.stat(path).st_ino != inode
        except FileNotFoundError:
            rotated = True
        if rotated:
            fh.close()
            fh = None
            from_start = True  # a file that replaced the old one is read from its start
            continue
        time.sleep(poll)
    if fh is not None:
        fh.close()


def log_path(log_dir: Path, name: str) -> Path:
    return log_dir / f"{name}.log"
