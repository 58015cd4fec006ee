"""Embedder role: claim pending chunks with a lease, embed them, push vectors to the indexer.

The embedder never marks anything done: it only leases chunks (so that several embedders
never work on the same chunk at once) and sends `(chunk ids, float16 matrix)` to the
indexer, which commits. A crash anywhere here loses at most the lease: when it expires the
chunks are claimable again, and the indexer drops a duplicate delivery of a chunk that was
committed meanwhile. Flow control is the PUSH socket's small HWM: when the indexer falls
behind, sends stop succeeding and the embedder stops claiming instead of leasing work it
cannot deliver before the lease runs out.
"""

from __future__ import annotations

import enum
import logging
import os
import time
import uuid

import numpy as np
import psutil
import zmq

from .. import memory, protocol
from ..embedders import make_embedder
from ..store import Store
from .base import Role, run

log = logging.getLogger("roxi.embedder")

#: messages buffered toward the indexer per embedder (each a batch of chunks)
VECTORS_HWM = 4
#: longest a stopping embedder waits to hand its last batch to the indexer, seconds
SHUTDOWN_FLUSH_SECONDS = 0.5
#: nice increment: the embedder yields the CPU to the query server
NICE = 5


class CpuWatch:
    """Is the machine busy with work other than ours? Sampled at most once a second."""

    def __init__(self, threshold_percent: float) -> None:
        self.threshold = threshold_percent
        self.me = psutil.Process()
        self.ncpu = psutil.cpu_count() or 1
        self.next_sample = 0.0
        self.others = 0.0
        psutil.cpu_percent(None)  # prime both counters: the first call has no interval
        self.me.cpu_percent(None)

    def busy(self, now: float) -> bool:
        if now >= self.next_sample:
            self.next_sample = now + 1.0
            # Our own use does not count: an embedder must not yield to itself.
            self.others = max(0.0, psutil.cpu_percent(None) - self.me.cpu_percent(None) / self.ncpu)
        return self.others > self.threshold


class EState(enum.Enum):
    AWAKE = "awake"
    ASLEEP = "asleep"


class Embedder(Role):
    role = "embedder"

    def initialize(self) -> None:
        ecfg = self.cfg.embedder
        self.store = Store(self.cfg.db_path, busy_timeout_ms=self.cfg.store.busy_timeout_ms)
        self.model = make_embedder(ecfg.backend, dim=ecfg.dim)
        self.store.ensure_model(self.model.model_id, self.model.dim)
        self.owner = f"{self.name}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.push = protocol.configure(self.ctx.socket(zmq.PUSH), hwm=VECTORS_HWM)
        self.push.connect(self.cfg.endpoint("vectors"))
        self.poller = zmq.Poller()
        self.poller.register(self.push, zmq.POLLOUT)
        self.outbox: list | None = None  # frames of a batch not yet handed to zmq
        now = time.monotonic()
        self.state = EState.AWAKE
        self.model.load()
        self.next_claim = 0.0
        self.last_work = now  # last time a claim found chunks (or we woke)
        self.last_queries = float("-inf")  # last time the supervisor relayed query traffic
        self.next_check = 0.0  # next pending-count check while asleep
        self.work_notified = False
        self.cpu = CpuWatch(self.cfg.embedder.busy_cpu_percent)
        self.embedded = self.batches = self.yields = 0
        try:
            os.nice(NICE)
        except OSError:
            pass

    # --- main loop ---------------------------------------------------------------
    def loop(self, now: float) -> None:
        ecfg = self.cfg.embedder
        if self.outbox is not None:
            self._flush(self.poll_timeout())
            return
        if self.state is EState.ASLEEP:
            self._doze(now)
            return
        if now < self.next_claim:
            time.sleep(min(self.next_claim - now, self.poll_timeout()))
            return
        if self.cpu.busy(now):
            self.yields += 1  # the machine is busy with other work: leave it the CPU
            self.next_claim = now + ecfg.yield_pause_seconds
            return
        serving = now - self.last_queries < ecfg.yield_seconds
        size = ecfg.yield_batch_size if serving else ecfg.batch_size
        pause = max(ecfg.pause_seconds, ecfg.yield_pause_seconds) if serving else ecfg.pause_seconds
        batch = self.store.claim(self.owner, size, now=time.time(), lease_seconds=ecfg.lease_seconds)
        if not batch:
            if now - self.last_work >= ecfg.idle_seconds:
                self.sleep(now)
            self.next_claim = now + ecfg.poll_seconds
            return
        self.last_work = now
        self.yields += serving
        ids = [cid for cid, _ in batch]
        try:
            vectors = self.model.encode([text for _, text in batch])
        except Exception as exc:  # a backend error must not lose the chunks: give them back
            log.warning("embedding %d chunks failed: %s", len(ids), exc)
            self.store.release(ids, owner=self.owner, error=str(exc)[:500], max_attempts=ecfg.max_attempts)
            self.next_claim = now + ecfg.poll_seconds
            return
        meta, buf = protocol.encode_array(np.asarray(vectors, dtype=np.float16))
        header = {"v": protocol.VERSION, "type": "vectors", "chunk_ids": ids,
                  "model_id": self.model.model_id, "sender": self.owner, **meta}
        self.outbox = [protocol.pack(header), buf]
        self.embedded += len(ids)
        self.batches += 1
        self.next_claim = now + pause
        self._flush(self.poll_timeout())

    def _doze(self, now: float) -> None:
        """Asleep: look for work now and then with a count query; the model stays unloaded."""
        if self.work_notified or now >= self.next_check:
            self.work_notified = False
            self.next_check = now + self.cfg.embedder.wake_check_seconds
            if self.store.pending_count(now=time.time()) > 0:
                self.wake(now)
                return
        time.sleep(self.poll_timeout())

    # --- sleep and wake ----------------------------------------------------------
    def sleep(self, now: float) -> None:
        if self.state is EState.ASLEEP:
            return
        self.model.unload()
        self.state = EState.ASLEEP
        self.next_check = now + self.cfg.embedder.wake_check_seconds
        memory.release()
        log.info("asleep (no pending chunks for %.0f s): model unloaded", now - self.last_work)

    def wake(self, now: float) -> None:
        if self.state is EState.AWAKE:
            return
        self.model.load()
        self.state = EState.AWAKE
        self.last_work = now
        self.next_claim = 0.0
        log.info("awake")

    def command(self, msg: dict, now: float) -> None:
        op = msg.get("op")
        if op == "sleep":
            self.sleep(now)
        elif op == "wake":
            self.wake(now)
        elif op == "work":  # `roxi ingest` added chunks: look at once
            self.work_notified = True
            self.next_claim = 0.0
        elif op == "queries":  # the query server is serving: yield to it for a while
            self.last_queries = now

    def _flush(self, timeout: float) -> None:
        """Hand the pending batch to zmq if the indexer can take it within `timeout`."""
        if not self.poller.poll(int(timeout * 1000)):
            return  # indexer busy or down; the lease keeps the chunks ours meanwhile
        try:
            self.push.send_multipart(self.outbox, flags=zmq.NOBLOCK, copy=False)
            self.outbox = None
        except zmq.Again:
            pass

    def info(self) -> dict:
        if not hasattr(self, "state"):
            return {"state": "starting"}
        return {"state": "asleep" if self.state is EState.ASLEEP else "running",
                "embedded": self.embedded, "batches": self.batches, "yields": self.yields,
                "model_loaded": self.model.loaded, "model_id": self.model.model_id}

    def shutdown(self) -> None:
        # Best effort and short (a SIGKILLed supervisor expects its children gone within
        # 2 s): whatever is not delivered returns to pending when its lease expires.
        if getattr(self, "outbox", None) is not None:
            self._flush(SHUTDOWN_FLUSH_SECONDS)
        if hasattr(self, "push"):
            # The indexer is stopped after the embedders, so a short linger delivers what
            # zmq still queues; anything lost here only waits for its lease to expire.
            self.push.close(linger=int(SHUTDOWN_FLUSH_SECONDS * 1000))
        if hasattr(self, "store"):
            self.store.close()


def main(argv: list[str] | None = None) -> int:
    return run(Embedder, argv)


if __name__ == "__main__":
    raise SystemExit(main())
