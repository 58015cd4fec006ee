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

import logging
import os
import time
import uuid

import numpy as np
import zmq

from .. import protocol
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
        self.next_claim = 0.0
        self.embedded = 0
        self.batches = 0
        try:
            os.nice(NICE)
        except OSError:
            pass

    def loop(self, now: float) -> None:
        if self.outbox is not None:
            self._flush(self.poll_timeout())
            return
        if now < self.next_claim:
            time.sleep(min(self.next_claim - now, self.poll_timeout()))
            return
        batch = self.store.claim(self.owner, self.cfg.embedder.batch_size, now=time.time(),
                                 lease_seconds=self.cfg.embedder.lease_seconds)
        if not batch:
            self.next_claim = now + self.cfg.embedder.poll_seconds
            return
        ids = [cid for cid, _ in batch]
        try:
            vectors = self.model.encode([text for _, text in batch])
        except Exception as exc:  # a backend error must not lose the chunks: give them back
            log.warning("embedding %d chunks failed: %s", len(ids), exc)
            self.store.release(ids, owner=self.owner, error=str(exc)[:500],
                               max_attempts=self.cfg.embedder.max_attempts)
            self.next_claim = now + self.cfg.embedder.poll_seconds
            return
        meta, buf = protocol.encode_array(np.asarray(vectors, dtype=np.float16))
        header = {"v": protocol.VERSION, "type": "vectors", "chunk_ids": ids,
                  "model_id": self.model.model_id, "sender": self.owner, **meta}
        self.outbox = [protocol.pack(header), buf]
        self.embedded += len(ids)
        self.batches += 1
        self.next_claim = now + self.cfg.embedder.pause_seconds
        self._flush(self.poll_timeout())

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
        return {"state": "running", "embedded": self.embedded, "batches": self.batches,
                "model_id": self.model.model_id}

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
