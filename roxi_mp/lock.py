"""The single-instance lock of a data directory (flock on <data_dir>/supervisor.lock).

The supervisor holds an exclusive lock for its whole life; the kernel drops it on any exit,
kill -9 included, so a stale lock file never blocks a restart. Anyone else can ask whether
a supervisor runs by trying a non-blocking shared lock, without trusting pid files or a
leftover ipc socket.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import AlreadyRunning


class DataDirLock:
    def __init__(self, path: Path, *, purpose: str = "supervisor") -> None:
        self.path = path
        self.purpose = purpose  # written beside the pid: who holds the directory, and why
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 64, 0).decode(errors="replace").split()
            os.close(fd)
            pid, what = (text + ["?", "supervisor"])[:2]
            raise AlreadyRunning(f"another {what} (pid {pid}) is running on {self.path.parent}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.purpose}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def is_locked(path: Path) -> bool:
    """True while some process holds the supervisor lock of this data directory."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def holder_pid(path: Path) -> int | None:
    try:
        return int((path.read_text().split() or ["0"])[0]) or None
    except (OSError, ValueError):
        return None


def holder_purpose(path: Path) -> str | None:
    """What the holder of the lock is doing ("supervisor", "reembed", ...), if it says."""
    try:
        words = path.read_text().split()
    except OSError:
        return None
    return words[1] if len(words) > 1 else "supervisor"
