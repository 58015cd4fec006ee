"""When the indexer builds the approximate index, and the one build child at a time.

The indexer's loop calls `Builds.step(rows)` with its committed rows; a due build runs as
`python -m roxi_mp.ann_build` (a separate process, so the indexer's commits and memory do
not wait on it), and a finished one tells the indexer a new `vectors.ann` is in place.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .process import end_child

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("roxi.ann")

#: an update is due once the uncovered rows reach this fraction of the covered ones
UPDATE_FRACTION = 0.1


class Builds:
    """When to build, and the one build child at a time; driven by the indexer's loop.

    A build starts once the store holds `ann_min_rows` rows, and again when the rows not
    yet covered reach max(ann_update_rows, ann_update_fraction x covered) (so a bulk ingest
    costs a logarithmic number of builds, not one per update_rows), or when any are
    uncovered and `ann_update_seconds` passed since the last build. A failed build is
    retried after a backoff doubling from 30 s up to ann_update_seconds.
    """

    def __init__(self, cfg: Config, *, covered: int = 0, spawn: Any = None,
                 clock: Any = time.monotonic, vectors_path: Path | None = None) -> None:
        self.cfg = cfg
        self.covered = covered
        # The current epoch's file (a compaction moves it on: `reset`); the build maps it.
        self.vectors_path = vectors_path or cfg.vectors_path
        self.spawn = spawn or self._spawn
        self.clock = clock
        self.proc: Any = None
        self.target = 0
        self.started = 0.0
        self.last_end = clock()
        self.retry_at = 0.0
        self.failures = 0
        self.builds = 0
        self.last_seconds: float | None = None

    def due(self, rows: int, now: float) -> bool:
        i = self.cfg.indexer
        if i.index == "exact" or self.proc is not None or rows < i.ann_min_rows or now < self.retry_at:
            return False
        new = rows - self.covered
        if new <= 0:
            return False
        return (self.covered == 0 or new >= max(i.ann_update_rows, UPDATE_FRACTION * self.covered)
                or now - self.last_end >= i.ann_update_seconds)

    def step(self, rows: int, *, hold: bool = False) -> bool:
        """Reap a finished build or start a due one (none while `hold`: a compaction is
        about to renumber the rows); True when a new index was installed."""
        now = self.clock()
        if self.proc is not None:
            code = self.proc.poll()
            if code is None:
                return False
            self.proc, self.last_end = None, now
            if code == 0:
                self.covered, self.failures, self.builds = self.target, 0, self.builds + 1
                self.last_seconds = now - self.started
                log.info("%s index now covers %d rows (built in %.1f s)", self.cfg.indexer.index,
                         self.covered, self.last_seconds)
                return True
            self.failures += 1
            delay = min(self.cfg.indexer.ann_update_seconds, 30.0 * 2 ** (self.failures - 1))
            self.retry_at = now + delay
            log.error("index build exited with %s; retrying in %.0f s", code, delay)
            return False
        if not hold and self.due(rows, now):
            self.target, self.started = rows, now
            self.proc = self.spawn(rows)
            log.info("building the %s index over %d rows", self.cfg.indexer.index, rows)
        return False

    def _spawn(self, rows: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "roxi_mp.ann_build", *self.cfg.to_argv(), "--rows", str(rows),
                                 "--vectors", str(self.vectors_path)], stdin=subprocess.DEVNULL, close_fds=True)

    def reset(self, vectors_path: Path) -> None:
        """A compaction switched to `vectors_path` (and removed the index): build anew."""
        self.stop()
        self.vectors_path, self.covered, self.retry_at = vectors_path, 0, 0.0

    def stop(self, timeout: float = 5.0) -> None:
        """End a running build (its .tmp file is removed at the next start)."""
        if self.proc is None:
            return
        end_child(self.proc, timeout=timeout)
        self.proc = None

    def info(self) -> dict:
        return {"index": self.cfg.indexer.index, "ann_rows": self.covered, "building": self.proc is not None,
                "builds": self.builds, "build_failures": self.failures, "last_build_seconds": self.last_seconds}
