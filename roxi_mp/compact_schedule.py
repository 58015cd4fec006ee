"""When the indexer compacts, and the one compaction at a time (roxi_mp.compact).

The indexer's loop calls `Compactions.step`. Every `compact_check_seconds` it counts the
dead rows (only when the visibility sequence or the rows moved since the last count) and
starts a compaction when they reach `compact_min_rows` and exceed `compact_dead_fraction`
of the committed rows, or when `roxi compact` asked (`request`). A compaction goes
through one `Phase` at a time: the child copies the live rows (COPYING; the indexer keeps
committing into the old file), then, READY, the indexer stops committing and a thread of
its own runs the switch (SWITCHING, roxi_mp.compact_swap.finish: the indexer's loop keeps
heart-beating and receiving meanwhile), then the indexer installs the new writer and the
space is given back in short steps between commits (CLEANING). A compaction is refused,
with the reason in status, when the disk cannot hold the new file; a failed one is
retried after a backoff.
"""

from __future__ import annotations

import enum
import logging
import os
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from . import compact
from .compact_swap import Cleanup, Switched, finish, history
from .errors import StoreError
from .logs import log_path
from .process import end_child
from .vectors import HEADER_BYTES

if TYPE_CHECKING:
    from .config import Config
    from .store import Store

log = logging.getLogger("roxi.compact")

#: bytes left free beyond the new vectors file and its sidecar (64 MiB)
DISK_MARGIN_BYTES = 64 << 20
#: a compaction child is killed after this many seconds plus one per CHILD_ROWS_PER_SECOND rows
CHILD_TIMEOUT_SECONDS = 600.0
CHILD_ROWS_PER_SECOND = 2_000
#: longest wait, seconds, before a failed compaction is tried again
RETRY_MAX_SECONDS = 3600.0
#: bytes of the sidecar per kept row (int64 row numbers)
SIDECAR_ROW_BYTES = 8


class Phase(enum.Enum):
    IDLE = "idle"
    COPYING = "copying"  # the child writes the new file; commits go on into the old one
    READY = "ready"  # the child is done: the indexer switches at its next step
    SWITCHING = "switching"  # the switch thread runs; the indexer commits nothing
    CLEANING = "cleaning"  # switched; the old file and dead records are being removed


def disk_refusal(cfg: Config, *, live_rows: int, dim: int, statvfs: Callable[[Any], Any] = os.statvfs) -> str | None:
    """Why the data dir cannot take a compaction's new file now, or None if it can."""
    st = statvfs(cfg.data_dir)
    free = st.f_bavail * st.f_frsize
    need = HEADER_BYTES + live_rows * (2 * dim + SIDECAR_ROW_BYTES) + DISK_MARGIN_BYTES
    if free >= need:
        return None
    return (f"not enough disk space to compact: the new vectors file needs {need / 2**20:.0f} MiB "
            f"(with a margin), {free / 2**20:.0f} MiB are free in {cfg.data_dir}")


class Compactions:
    """The trigger, the child process and the switch thread; driven by the indexer's loop."""

    def __init__(self, cfg: Config, store: Store, *, dim: int, spawn: Any = None,
                 statvfs: Callable[[Any], Any] = os.statvfs, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.dim = cfg, dim
        self.spawn = spawn or self._spawn
        self.statvfs, self.clock = statvfs, clock
        self.phase = Phase.IDLE
        self.proc: Any = None
        self.thread: threading.Thread | None = None
        self.outcome: Switched | BaseException | None = None
        self.cleanup: Cleanup | None = None
        self.epoch = 0  # the epoch being written
        self.started = self.deadline = 0.0
        self.requested = False
        self.next_check = clock()
        self.retry_at = 0.0
        self.seen: tuple[int, int, int] | None = None  # (epoch, visibility seq, rows) of the dead count
        self.dead = 0
        self.refused: str | None = None
        self.error: str | None = None
        self.failures = 0
        self.count, self.last = history(store)

    @property
    def running(self) -> bool:
        return self.phase is not Phase.IDLE

    def request(self) -> None:
        """`roxi compact`: start at the next step if there is anything to reclaim."""
        self.requested = True
        self.next_check = 0.0

    def settled(self, store: Store) -> bool:
        """Nothing running, asked, refused or due: the indexer may exit until work appears
        (a compaction that is due, refused for the disk or waiting for its retry is not)."""
        if self.running or self.requested or self.refused:
            return False
        return not self._due(store.visibility(), store)

    def _due(self, vis: Any, store: Store) -> bool:
        """Whether the dead rows call for a compaction (counted again only when the visible
        rows changed since the last count)."""
        if self.seen != tuple(vis):
            self.dead, self.seen = store.dead_rows(), tuple(vis)
        i = self.cfg.indexer
        return self.dead >= i.compact_min_rows and self.dead > i.compact_dead_fraction * vis.rows

    def step(self, store: Store) -> None:
        """Reap the child, clean up a little, or check whether one is due (never while
        READY or SWITCHING: the indexer drives those)."""
        now = self.clock()
        if self.phase is Phase.COPYING:
            self._reap(now, store)
        elif self.phase is Phase.CLEANING:
            if not self.cleanup.step(store):  # done: count the dead rows (tombstones kept) again
                self.phase, self.cleanup = Phase.IDLE, None
                self.seen, self.dead = tuple(store.visibility()), store.dead_rows()
        elif self.phase is Phase.IDLE and now >= self.next_check:
            self._check(store, now)

    def _check(self, store: Store, now: float) -> None:
        i = self.cfg.indexer
        self.next_check = now + i.compact_check_seconds
        vis = store.visibility()
        due = self._due(vis, store)
        asked, self.requested = self.requested, False
        if asked and not self.dead:
            log.info("compaction asked for, but there are no dead rows to reclaim")
        if not self.dead or not (asked or (due and now >= self.retry_at)):
            return
        refusal = disk_refusal(self.cfg, live_rows=vis.rows - self.dead, dim=self.dim, statvfs=self.statvfs)
        if refusal is not None:
            if refusal != self.refused:
                log.error("compaction refused: %s", refusal)
            self.refused = refusal
            return
        self.refused = None
        compact.remove_strays(self.cfg, vis.epoch)  # what a failed attempt left
        self.epoch, self.started = vis.epoch + 1, now
        self.deadline = now + CHILD_TIMEOUT_SECONDS + vis.rows / CHILD_ROWS_PER_SECOND
        log.info("compacting: %d dead of %d rows (%s)", self.dead, vis.rows, "asked" if asked else "due")
        self.proc = self.spawn(self.epoch)
        self.phase = Phase.COPYING

    def _reap(self, now: float, store: Store) -> None:
        code = self.proc.poll()
        if code is None and now >= self.deadline:
            log.error("compaction child still running after %.0f s: killing it", now - self.started)
            self._end_child()
            code = -9
        if code is None:
            return
        self.proc = None
        if code == 0:
            self.phase = Phase.READY
        else:
            self._fail(store, f"the compaction child exited with {code} (its log: compact.log)")

    def begin_switch(self, rows: int) -> None:
        """Called by the indexer between commits, with its writer at `rows` committed rows;
        from now until `switched()` returns the indexer commits nothing."""
        assert self.phase is Phase.READY
        self.phase, self.outcome = Phase.SWITCHING, None
        self.thread = threading.Thread(target=self._finish, args=(rows,), name="compact-switch", daemon=True)
        self.thread.start()

    def _finish(self, rows: int) -> None:
        try:
            self.outcome = finish(self.cfg, epoch=self.epoch, rows_now=rows, started=self.started,
                                  clock=self.clock)
        except BaseException as exc:  # handed to the loop's thread, which decides
            self.outcome = exc

    def switched(self, store: Store, *, wait: bool = False) -> Switched | None:
        """The finished switch once the thread is done; None while it runs, or if it failed
        before switching (the old store goes on). StoreError if it failed after: the
        indexer must restart (its start finishes the job)."""
        if self.thread is None or (self.thread.is_alive() and not wait):
            return None
        self.thread.join()
        self.thread, outcome = None, self.outcome
        if isinstance(outcome, BaseException):
            if store.vectors_epoch() == self.epoch:
                raise StoreError(f"compaction switched to epoch {self.epoch} but then failed: {outcome}")
            self._fail(store, f"the compaction switch failed: {type(outcome).__name__}: {outcome}")
            return None
        self.count, self.last, self.failures, self.error = self.count + 1, outcome.record, 0, None
        self.cleanup, self.phase = Cleanup(self.cfg, self.epoch), Phase.CLEANING
        return outcome

    def _fail(self, store: Store, why: str) -> None:
        self.failures += 1
        self.error = why[:300]
        delay = min(RETRY_MAX_SECONDS, self.cfg.indexer.compact_check_seconds * 2 ** self.failures)
        self.retry_at = self.clock() + delay
        log.error("compaction failed: %s; the old store goes on, next try in %.0f s", why, delay)
        compact.remove_strays(self.cfg, store.vectors_epoch())  # the new file and sidecars
        self.phase = Phase.IDLE

    def _spawn(self, epoch: int) -> subprocess.Popen:
        path = log_path(self.cfg.log_dir, "compact")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > self.cfg.supervisor.log_max_bytes:
            os.replace(path, path.with_name(path.name + ".1"))
        with open(path, "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "roxi_mp.compact", *self.cfg.to_argv(),
                                     "--epoch", str(epoch)], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, close_fds=True)

    def _end_child(self, timeout: float = 5.0) -> None:
        if self.proc is not None:
            end_child(self.proc, timeout=timeout)

    def stop(self, store: Store) -> Switched | None:
        """On shutdown: end a running child (its files are removed at the next start), let
        a switch in progress finish (it is short) and return it for the indexer to install."""
        if self.phase is Phase.COPYING:
            self._end_child()
            self.proc, self.phase = None, Phase.IDLE
        return self.switched(store, wait=True) if self.phase is Phase.SWITCHING else None

    def info(self) -> dict:
        return {"running": self.running, "last": self.last, "reclaimable_bytes": self.dead * 2 * self.dim,
                "refused": self.refused, "count": self.count, "error": self.error}
