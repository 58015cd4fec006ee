"""Query texts embedded off the query server's loop, for backends that wait on a network.

An embedding service (the http backend) can be slow or busy: a query that waited 11 s for
it inline stopped the query server's heartbeat, and the supervisor killed the server as
hung. So the query server hands such a text to a few worker threads and *parks* the
request (its ROUTER envelope, id and options) instead of answering it; the loop goes on
polling, answering vector queries and heartbeating. A worker that finishes writes a byte
to a wake pipe the loop polls, so the answer goes out at once: the loop then searches
with the vector, as for any query. A parked request whose deadline
(`query.embed_timeout_seconds`) passes first gets an `embed_timeout` error; its embedding
is dropped if no worker has started it, else left to finish and its vector remembered in
a small text -> vector memo, so a client's retry of the same text is answered without the
service. Everything is bounded: at most `query.embed_max_waiting` embeddings outstanding
(parked, or past their deadline and still running; the next text query gets
`upstream_unavailable` at once), workers up to the backend's `max_in_flight`, the memo's
entries. Local models (the MiniLM model process, hashing) answer in milliseconds and stay
inline (`Embedder.remote` is False): the handoff would only add to their latency.

Deep sleep calls `release()`: idle workers exit (a busy one once its text is done) and the
memo is dropped. Workers touch only the embedder, never the mapped vectors; a query parked
when sleep comes still gets its answer (the loop wakes the server for it, as for any
query) or its error.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .embedders.base import EmbedError, Embedder
from .errors import EmbedTimeout, UpstreamUnavailable

#: texts whose vector is remembered (64): a retry after embed_timeout finds its late vector
MEMO_ENTRIES = 64
#: most worker threads, whatever the backend's max_in_flight (16)
MAX_WORKERS = 16
#: status() counters of a backend that mean the service failed a request
FAILURE_COUNTERS = ("transport_errors", "server_errors", "rate_limited", "failures")


class Job:
    """One text to embed: a worker sets `vector` or `error`, then `done`."""

    __slots__ = ("text", "vector", "error", "started", "cancelled", "done")

    def __init__(self, text: str) -> None:
        self.text = text
        self.vector: np.ndarray | None = None
        self.error: BaseException | None = None
        self.started = self.cancelled = self.done = False


class EmbedPool:
    """Worker threads running `encode` on queued jobs, started on demand up to `workers`.

    Daemon threads: one stuck in a slow request must not keep the process from exiting
    (ThreadPoolExecutor joins its workers at exit). `notify()` is called after each job.
    """

    def __init__(self, encode: Callable[[Sequence[str]], np.ndarray], *, workers: int,
                 notify: Callable[[], None]) -> None:
        self.encode = encode
        self.workers = workers
        self.notify = notify
        self.cond = threading.Condition()  # guards everything below and each job's flags
        self.jobs: collections.deque[Job] = collections.deque()
        self.alive = self.idle = 0
        self.retiring = False

    def submit(self, job: Job) -> None:
        with self.cond:
            self.retiring = False
            self.jobs.append(job)
            if len(self.jobs) > self.idle and self.alive < self.workers:
                self.alive += 1
                threading.Thread(target=self._work, name="query-embed", daemon=True).start()
            self.cond.notify()

    def cancel(self, job: Job) -> bool:
        """Drop `job` if no worker has started it; False when it is running or done."""
        with self.cond:
            job.cancelled = True
            return not job.started

    def retire(self) -> None:
        """Let every worker exit once the queue is empty (a new submit keeps them)."""
        with self.cond:
            self.retiring = True
            self.cond.notify_all()

    def _work(self) -> None:
        while True:
            with self.cond:
                while not self.jobs and not self.retiring:
                    self.idle += 1
                    self.cond.wait()
                    self.idle -= 1
                if not self.jobs:
                    self.alive -= 1
                    return
                job = self.jobs.popleft()
                if job.cancelled:
                    continue  # its deadline passed while it queued
                job.started = True
            try:
                job.vector = np.ascontiguousarray(self.encode([job.text]), dtype=np.float32)
            except BaseException as exc:  # handed to the loop, which answers with it
                job.error = exc
            job.done = True
            self.notify()


@dataclass
class Parked:
    """A text query waiting for its embedding; the loop answers it from `envelope`."""

    envelope: list[bytes]
    request_id: Any
    k: int
    with_text: bool
    started: float  #: time.perf_counter() at arrival, for the reply's took_ms
    deadline: float  #: on QueryEmbeds.clock
    job: Job
    failures: int  #: the backend's failure count when parked
    context: Any = None  #: the caller's, for answering it (the query server: text and options)


class QueryEmbeds:
    """The parked text queries of a query server, its worker pool, wake pipe and memo."""

    def __init__(self, model: Embedder, *, timeout_seconds: float, max_waiting: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.model = model
        self.timeout_seconds = timeout_seconds
        self.max_waiting = max_waiting
        self.clock = clock
        self.parked: list[Parked] = []
        self.orphans: list[Job] = []  # answered at their deadline, still being embedded
        self.memo: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self.timeouts = self.refused = 0
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._closed = False
        workers = max(1, min(MAX_WORKERS, max_waiting, model.max_in_flight))
        self.pool = EmbedPool(model.encode, workers=workers, notify=self._notify)

    def fileno(self) -> int:
        """The wake pipe's read end: readable when a worker finished (drain() empties it)."""
        return self._rfd

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):  # empty: every wake-up byte is read
            while os.read(self._rfd, 4096):
                continue

    def _notify(self) -> None:
        with self.pool.cond:  # never a write to a closed (or reused) descriptor
            if not self._closed:
                try:
                    os.write(self._wfd, b"\0")
                except BlockingIOError:
                    pass  # the pipe is full of wake-ups already

    # --- parking ---------------------------------------------------------------------
    def cached(self, text: str) -> np.ndarray | None:
        vector = self.memo.get(text)
        if vector is not None:
            self.memo.move_to_end(text)
        return vector

    def park(self, text: str, *, envelope: list[bytes], request_id: Any, k: int, with_text: bool,
             started: float, context: Any = None) -> None:
        """Queue `text` for a worker; UpstreamUnavailable when it cannot be embedded in time."""
        self._sweep()
        if len(self.parked) + len(self.orphans) >= self.max_waiting:
            self.refused += 1
            raise UpstreamUnavailable(f"{self.max_waiting} text queries already wait for the embedding "
                                      "service (query.embed_max_waiting); try again later")
        status = self.model.status()
        backoff = status.get("backoff_seconds") or 0.0
        if backoff >= self.timeout_seconds:
            self.refused += 1
            raise UpstreamUnavailable(f"the embedding service is backed off for {backoff:g} s after "
                                      f"errors (last: {status.get('last_error')})")
        job = Job(text)
        self.pool.submit(job)
        self.parked.append(Parked(envelope, request_id, k, with_text, started,
                                  self.clock() + self.timeout_seconds, job, _failures(status), context))

    def pop_ready(self) -> tuple[Parked, np.ndarray | None, BaseException | None] | None:
        """The next parked query to answer now, with its vector or its error; None if none."""
        self._sweep()
        now = self.clock()
        for i, p in enumerate(self.parked):
            if p.job.done:
                del self.parked[i]
                if p.job.error is not None:
                    return p, None, _query_error(p.job.error)
                self._remember(p.job)
                return p, p.job.vector, None
            if now >= p.deadline:
                del self.parked[i]
                if not self.pool.cancel(p.job):
                    self.orphans.append(p.job)  # running: its vector goes to the memo
                self.timeouts += 1
                return p, None, self._timeout(p)
        return None

    def poll_timeout(self, longest: float) -> float:
        """How long the loop may wait for a request: not past the next deadline."""
        if not self.parked:
            return longest
        if any(p.job.done for p in self.parked):
            return 0.0
        return max(0.0, min(longest, min(p.deadline for p in self.parked) - self.clock()))

    def _timeout(self, p: Parked) -> EmbedTimeout:
        message = (f"the embedding service did not answer within {self.timeout_seconds:g} s "
                   "(query.embed_timeout_seconds)")
        status = self.model.status()
        if _failures(status) > p.failures and status.get("last_error"):
            message += f"; its last error: {status['last_error']}"
        return EmbedTimeout(message)

    def _sweep(self) -> None:
        """Forget orphans that finished; their vectors go to the memo."""
        if any(job.done for job in self.orphans):
            for job in self.orphans:
                if job.done and job.error is None:
                    self._remember(job)
            self.orphans = [job for job in self.orphans if not job.done]

    def _remember(self, job: Job) -> None:
        self.memo[job.text] = job.vector
        self.memo.move_to_end(job.text)
        while len(self.memo) > MEMO_ENTRIES:
            self.memo.popitem(last=False)

    # --- sleep and shutdown --------------------------------------------------------------
    def release(self) -> None:
        """Deep sleep: idle workers exit, the memo goes; parked queries stay parked."""
        self.memo.clear()
        self.pool.retire()

    def close(self) -> list[Parked]:
        """Stop for good; returns the queries still parked (the caller answers them)."""
        if self._closed:
            return []
        parked, self.parked = self.parked, []
        for p in parked:
            self.pool.cancel(p.job)
        self.pool.retire()
        with self.pool.cond:
            self._closed = True
            os.close(self._rfd)
            os.close(self._wfd)
        return parked

    def info(self) -> dict:
        return {"embeds_waiting": len(self.parked), "embeds_running_late": len(self.orphans),
                "embed_timeouts": self.timeouts, "embeds_refused": self.refused}


def _failures(status: dict) -> int:
    return sum(int(status.get(name) or 0) for name in FAILURE_COUNTERS)


def _query_error(exc: BaseException) -> BaseException:
    """What a parked query's client is told of its embedding's failure."""
    if not isinstance(exc, Exception):  # SystemExit and the like, in a worker: not for the loop to raise
        return RuntimeError(f"embedding worker: {exc!r}")
    if isinstance(exc, EmbedError) and not exc.input_error:
        return UpstreamUnavailable(f"the embedding service failed: {exc}")
    return exc  # a refused text (embed_failed), another RoxiError, or a bug (internal)

