"""Indexer role: the single writer of the vectors file and of the `indexed` chunk state.

For a group of received batches it drops chunks that already have a row (a duplicate
delivery after a lease expired), then commits the rest through roxi_mp.commit (append,
fsync, one SQLite transaction, header) and publishes `(generation, rows)` to the query
server. On start it truncates rows a crashed commit left past `committed_rows`; those
chunks were never marked and are embedded again when their leases expire. Received batches
are grouped for up to `commit_max_ms` or `commit_max_rows` so one fsync serves many.

Idle for `embedder.idle_seconds` (or at once on `roxi sleep`, once nothing is in hand), it
reports asleep; asleep with nothing of its own due (`_settled`) it exits (SUSPENDED,
`supervisor.suspend`) and the supervisor starts it again when chunks are pending, a
compaction may be due or it is asked for one.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import sqlite3
import time

import numpy as np
import zmq

from .. import ann, ann_schedule, compact, memory, protocol
from ..commit import commit
from ..histogram import Histogram
from ..compact_schedule import Compactions, Phase
from ..compact_swap import Switched
from ..config import Config
from ..embedders import make_embedder
from ..errors import StoreError
from ..store import Store
from ..vectors import VectorWriter
from .base import Role, run

log = logging.getLogger("roxi.indexer")

#: received messages buffered from all embedders together
VECTORS_HWM = 64
#: seconds between looks for chunks whose vector is to be copied while awake; asleep it is
#: embedder.wake_check_seconds, as the embedders' look for work (a put or `roxi ingest`
#: sends `work`, which looks at once): a sleeping system must cost next to no CPU
COPY_CHECK_SECONDS = 0.5
#: seconds before a failed commit is retried, doubling up to the maximum
COMMIT_RETRY_INITIAL = 0.5
COMMIT_RETRY_MAX = 30.0
#: longest poll, seconds, while a compaction's switch runs (its end is looked for between polls)
SWITCH_POLL_SECONDS = 0.05
#: longest poll, seconds, while a compaction's child copies or its cleanup runs: the child's
#: end is seen, and the cleanup's next bounded step taken, within this, not at the next
#: idle poll (0.5 s: a 10k-row cleanup's seven steps took 3.6 s, nearly all of it waiting).
#: Other writers still take the store's lock between two steps.
COMPACTION_POLL_SECONDS = 0.05


class IState(enum.Enum):
    STARTING = "starting"
    AWAKE = "awake"
    ASLEEP = "asleep"


class Indexer(Role):
    role = "indexer"

    def __init__(self, cfg: Config, ctx: zmq.Context, *, name: str | None = None) -> None:
        super().__init__(cfg, ctx, name=name)
        self.state = IState.STARTING
        # Opened by initialize(); shutdown() closes what is not None.
        self.store: Store | None = None
        self.writer: VectorWriter | None = None
        self.builds = None  # the background approximate-index builds
        self.compactions: Compactions | None = None  # the background compactions
        self.pull: zmq.Socket | None = None  # vectors from the embedders
        self.poller = zmq.Poller()  # pull, and the supervisor's commands
        self.pub: zmq.Socket | None = None  # generation events to the query server
        self.model_id, self.dim = "", 0
        self.pending: dict[int, np.ndarray] = {}  # chunk id -> float16 row, insertion ordered
        self.copies: set[int] = set()  # those of `pending` copied from a row, not embedded
        self.next_copy_check = 0.0  # when to look for chunks to copy (0: at once)
        self.deadline: float | None = None  # when the pending rows are committed
        self.generation = 0
        self.commits = self.rows_committed = self.duplicates = self.rejected = 0
        self.commit_seconds = Histogram()  # per commit (for /metrics)
        self.commit_failures = self.copied = 0
        self.last_error: str | None = None
        self.last_activity = 0.0  # last time vectors arrived
        self.sleep_asked = False  # `roxi sleep`: asleep as soon as nothing is in hand

    def initialize(self) -> None:
        self.store = Store.open(self.cfg)
        # The model id is known from the configuration without loading any model weights.
        model = make_embedder(self.cfg)
        self.model_id, self.dim = model.model_id, model.dim
        self.store.ensure_model(self.model_id, self.dim)
        # SQLite names the current vectors file; any other is what an interrupted compaction
        # left (before its switch: the new file; after it: the old one).
        path = self.cfg.vectors_file(self.store.vectors_epoch())
        for stray in compact.remove_strays(self.cfg, self.store.vectors_epoch()):
            log.warning("removed %s, left by an interrupted compaction", stray.name)
        self.writer = VectorWriter(path, dim=self.dim, model_id=self.model_id)
        dropped = self.writer.recover(self.store.committed_rows())
        if dropped:
            log.warning("dropped %d uncommitted rows left by an interrupted commit", dropped)
        stale = ann.remove_stale(self.cfg.ann_path, path, kind=self.cfg.indexer.index, rows=self.writer.rows)
        if stale:
            log.warning("removed an approximate index that no longer fits: %s", stale)
        covered = ann.read_header(self.cfg.ann_path).rows if self.cfg.ann_path.exists() else 0
        self.builds = ann_schedule.Builds(self.cfg, covered=covered, vectors_path=path)
        self.compactions = Compactions(self.cfg, self.store, dim=self.dim)
        self.pull = protocol.configure(self.ctx.socket(zmq.PULL), hwm=VECTORS_HWM,
                                       max_message_bytes=self._max_batch_bytes())
        self.pull.bind(self.cfg.endpoint("vectors"))
        self.poller.register(self.pull, zmq.POLLIN)
        self.watch_wakers(self.poller)  # a command or a stop signal ends a wait at once
        self.pub = protocol.configure(self.ctx.socket(zmq.PUB), hwm=self.cfg.limits.socket_hwm)
        self.pub.bind(self.cfg.endpoint("events"))
        self.generation = self.store.generation()
        self.last_activity = time.monotonic()
        self.state = IState.AWAKE
        self._publish()

    def next_duty(self) -> float:
        """Asleep: the next look for chunks to copy, or for a compaction that is due."""
        return min(self.next_copy_check, self.compactions.next_check)

    def _max_batch_bytes(self) -> int:
        rows = self.cfg.embedder.batch_size
        return rows * self.dim * 2 + rows * 16 + 64 * 1024

    def wait_seconds(self, now: float) -> float:
        """Longest this turn may wait for vectors: a commit that is due, or a compaction
        running, shortens the idle poll."""
        phase = self.compactions.phase
        if phase is Phase.SWITCHING:
            return SWITCH_POLL_SECONDS
        timeout = self.poll_timeout()
        if phase in (Phase.COPYING, Phase.CLEANING):
            timeout = min(timeout, COMPACTION_POLL_SECONDS)
        if self.deadline is not None:
            timeout = max(0.0, min(timeout, self.deadline - now))
        return timeout

    def loop(self, now: float) -> None:
        switching = self.compactions.phase is Phase.SWITCHING
        if self.pull in dict(self.poller.poll(int(self.wait_seconds(now) * 1000))):
            self.last_activity = time.monotonic()
            if self.state is IState.ASLEEP:
                self.state = IState.AWAKE
            # Drain what is queued without waiting again: one commit then covers all of it.
            while len(self.pending) < self.cfg.indexer.commit_max_rows:
                try:
                    frames = self.pull.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._receive([f.buffer for f in frames])
        now = time.monotonic()
        if switching:  # nothing commits until the switch thread is done
            if (switched := self.compactions.switched(self.store)) is not None:
                self._install(switched)
            return
        if now >= self.next_copy_check and not self.commit_failures:
            self._take_copies(now)
        if self.pending and self.deadline is None:
            self.deadline = now + self.cfg.indexer.commit_max_ms / 1000
        due = len(self.pending) >= self.cfg.indexer.commit_max_rows or now >= (self.deadline or now)
        if self.pending and due and not (self.commit_failures and now < (self.deadline or now)):
            self.commit()
        self._compact(now)
        if self.builds.step(self.writer.rows, hold=self.compactions.running):
            self._publish()  # the query server maps the new index at once
        elif (not self.pending and self.state is IState.AWAKE and self.builds.proc is None
              and not self.compactions.running
              and (self.sleep_asked or now - self.last_activity >= self.cfg.embedder.idle_seconds)):
            # Nothing to unload (no model, no mapping), but reporting sleep lets the
            # supervisor slow down once every role is idle.
            self.state, self.sleep_asked = IState.ASLEEP, False
            memory.release()
        if self.state is IState.ASLEEP and self.cfg.supervisor.suspend and self._settled():
            self.suspend = True  # exit (SUSPENDED): the supervisor starts us again on work

    def _settled(self) -> bool:
        """Nothing in hand and nothing of our own due: no rows to commit, no build or
        compaction running or due, and no chunk on its way to a row (leased by an embedder,
        to copy, or pending while not paused). Asleep, asked at most once a poll."""
        if self.pending or self.commit_failures or self.builds.proc is not None or self.compactions.running:
            return False
        i, rows = self.cfg.indexer, self.writer.rows
        if i.index != "exact" and rows >= i.ann_min_rows and rows > self.builds.covered:
            return False  # the rows not yet covered get their build (ann_update_seconds)
        return self.compactions.settled(self.store) and not self.store.unfinished(paused=self.store.paused())

    def _compact(self, now: float) -> None:
        """Drive the compactions; when one is ready to switch, switch between two commits."""
        self.compactions.step(self.store)
        if self.compactions.running and self.state is IState.ASLEEP:
            self.state, self.last_activity = IState.AWAKE, now  # status shows the work
        if self.compactions.phase is not Phase.READY or self.commit_failures:
            return
        # Take the copies first: a copy's source may be a dead row the compaction leaves out.
        self._take_copies(now)
        if self.pending:
            self.commit()
        if not self.commit_failures:
            self.builds.stop()  # an index over the old numbering is of no use any more
            self.compactions.begin_switch(self.writer.rows)
            self.state, self.last_activity = IState.AWAKE, now

    def _install(self, switched: Switched) -> None:
        """The switch committed: write into the new epoch's file from now on."""
        self.writer.close()
        self.writer = switched.writer
        self.generation = switched.generation
        self.builds.reset(self.writer.path)
        self._publish()  # rows may go down: the query server remaps on the new epoch

    def _take_copies(self, now: float) -> None:
        """Chunks whose text was embedded before get that row's vector: read here, committed
        with the received ones, no embedder asked (store_docs: "vectors are never bought twice")."""
        asleep = self.state is IState.ASLEEP
        self.next_copy_check = now + (self.cfg.embedder.wake_check_seconds if asleep else COPY_CHECK_SECONDS)
        room = self.cfg.indexer.commit_max_rows - len(self.pending)
        if room <= 0 or not self.store.has_copies():
            return
        found = [(cid, row) for cid, row in self.store.claim_copies(room + len(self.copies))
                 if cid not in self.pending][:room]
        if not found:
            return
        matrix = self.writer.read_rows(np.array([row for _, row in found], dtype=np.int64))
        for i, (cid, _) in enumerate(found):
            self.pending[cid] = matrix[i]
            self.copies.add(cid)
        self.last_activity = time.monotonic()
        if self.state is IState.ASLEEP:
            self.state = IState.AWAKE

    def _receive(self, frames: list[memoryview]) -> None:
        try:
            ids, matrix = protocol.parse_vectors_message(frames, model_id=self.model_id, dim=self.dim)
        except protocol.ProtocolError as exc:
            self.rejected += 1
            log.warning("rejected a vectors message: %s", exc)
            return
        for i, cid in enumerate(ids):
            if cid in self.pending:
                self.duplicates += 1  # delivered twice before one commit: keep the first
            else:
                self.pending[cid] = matrix[i]

    def commit(self) -> None:
        """Make the pending rows durable, then visible (see the module docstring).

        A commit that fails (disk full, a file size limit, SQLite busy or failing) takes
        back what it appended and keeps the rows in memory: they are paid work, so they
        are retried with a backoff, and meanwhile no more are received (the embedders
        hold theirs, with renewed leases, until the indexer takes them).
        """
        try:
            fresh = self.store.unindexed(self.pending)
            stale = [cid for cid in self.pending if cid not in fresh]
            for cid in stale:
                del self.pending[cid]
                self.copies.discard(cid)
            self.duplicates += len(stale)
            if self.pending:
                ids = list(self.pending)
                started = time.perf_counter()
                self.generation = commit(self.store, self.writer, ids, np.stack([self.pending[cid] for cid in ids]),
                                         reused=len(self.copies))
                self.commits += 1
                self.commit_seconds.observe(time.perf_counter() - started)
                self.rows_committed += len(ids)
                self.copied += len(self.copies)
                self._publish()
        except (OSError, sqlite3.Error, StoreError) as exc:
            self.commit_failures += 1
            delay = min(COMMIT_RETRY_MAX, COMMIT_RETRY_INITIAL * 2 ** (self.commit_failures - 1))
            self.deadline = time.monotonic() + delay
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            log.error("commit of %d rows failed (%s); kept in memory, retrying in %.1f s",
                      len(self.pending), self.last_error, delay)
            return
        if self.commit_failures:
            log.info("commit succeeded after %d failed attempts", self.commit_failures)
        self.commit_failures, self.last_error = 0, None
        self.pending.clear()
        self.copies.clear()
        self.deadline = None

    def _publish(self) -> None:
        event = protocol.generation_event(self.generation, self.writer.rows, self.builds.covered)
        with contextlib.suppress(zmq.Again):  # a slow subscriber also polls committed_rows
            self.pub.send_multipart(event, zmq.NOBLOCK)

    def state_name(self) -> str:
        if self.state is IState.STARTING:
            return "starting"
        return "asleep" if self.state is IState.ASLEEP else "running"

    def info(self) -> dict:
        if (state := self.state_name()) == "starting":
            return {"state": state}
        return {"state": state, "rows": self.writer.rows, "generation": self.generation,
                "commits": self.commits, "duplicates": self.duplicates, "rejected": self.rejected,
                "commit_failures": self.commit_failures, "last_error": self.last_error, "copied": self.copied,
                **self.builds.info(), "compaction": self.compactions.info(),
                "metrics": {"commit_seconds": self.commit_seconds.as_dict(), "rows_committed": self.rows_committed}}

    def command(self, msg: dict, now: float) -> None:
        if msg.get("op") == "work":  # new documents: some of their chunks may be copies
            self.next_copy_check = 0.0
        elif msg.get("op") == "sleep":
            # `roxi sleep` is deep sleep now, not after `embedder.idle_seconds`: asleep (and
            # then suspended, when settled) at the first step with nothing in hand. Rows
            # pending, a build or a compaction finish first.
            self.sleep_asked = True
        elif msg.get("op") == "wake":
            self.sleep_asked = False
            if self.state is IState.ASLEEP:
                self.state, self.last_activity = IState.AWAKE, now
        elif msg.get("op") == "compact" and self.compactions is not None:  # `roxi compact`
            self.compactions.request()

    def shutdown(self) -> None:
        if self.pull is not None:
            # Embedders stop first and linger to deliver; take what arrived, then flush it:
            # received vectors are paid work.
            for _ in range(10_000):
                try:
                    frames = self.pull.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._receive([f.buffer for f in frames])
        if self.compactions is not None and (switched := self.compactions.stop(self.store)) is not None:
            self._install(switched)
        if self.pending:
            self.commit()
        if self.builds is not None:
            self.builds.stop()
        for sock in (self.pull, self.pub):
            if sock is not None:
                sock.close(0)
        if self.writer is not None:
            self.writer.close()
        if self.store is not None:
            self.store.close()


def main(argv: list[str] | None = None) -> int:
    return run(Indexer, argv)


if __name__ == "__main__":
    raise SystemExit(main())
