"""Embedder role: claim pending chunks with a lease, embed them, push vectors to the indexer.

The embedder never marks anything done: it only leases chunks (so that several embedders
never work on the same chunk at once) and sends `(chunk ids, float16 matrix)` to the
indexer, which commits. A crash anywhere here loses at most the lease: when it expires the
chunks are claimable again, and the indexer drops a duplicate delivery.

Embedding runs in worker threads (`max_in_flight` of them: one for a local model, several
for an API), so the loop stays free to heartbeat, renew the leases of work in progress (a
slow or rate-limited API must not let them expire, or another embedder would pay for the
same chunks again), and hand results to the indexer. Flow control is the PUSH socket's
small HWM: while the indexer cannot take results, no new work is claimed.

Failures: a batch refused for its input is split in halves until the culprit stands alone,
so one bad chunk never fails its neighbours; a chunk that fails alone uses up an attempt
and is marked failed after `max_attempts`. When the service itself is down (nothing has
succeeded since the batch was sent), the batch goes back without using an attempt and the
embedder backs off, probing with ever smaller batches: an outage must not mark the whole
corpus failed, and a bad chunk in the very first batch must still be found.

Idle for `idle_seconds` (nothing claimed, nothing in flight, nothing waiting for the
indexer), the embedder sleeps: it exits (SUSPENDED, `supervisor.suspend`), and the
supervisor starts it again when work appears; with `suspend = false` it unloads its model
and stays, looking for work every `wake_check_seconds` with a count query, or at once when
`roxi ingest` notifies it. Asked
to sleep with work in hand, it drains first: claims nothing more, finishes and hands on
what it has, and reports `running` until then. It yields to query traffic (smaller
batches, pauses) and to a machine busy with other work.

Concurrency (issue 21): a local model (MiniLM) uses the whole machine while nobody asks
anything: with no query within `yield_seconds` and the rest of the machine under
`idle_cpu_percent`, one batch per core is in flight and the model computes that many calls
at once on one copy of its weights. A query (relayed by the supervisor) narrows it to one
model call at a time at once, so the running batches give a core back within one call.
"""

from __future__ import annotations

import contextlib
import concurrent.futures as cf
import enum
import logging
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import psutil
import zmq

from .. import memory, protocol
from ..config import Config
from ..embedders import EmbedError, make_embedder, rate_share
from ..embedders import Embedder as Model
from ..errors import ConfigError
from ..histogram import Histogram
from ..store import Store
from .base import Role, run

log = logging.getLogger("roxi.embedder")

#: messages buffered toward the indexer per embedder (each a batch of chunks)
VECTORS_HWM = 4
#: longest a stopping embedder waits to hand its last batch to the indexer, seconds
SHUTDOWN_FLUSH_SECONDS = 0.5
#: nice increment: the embedder yields the CPU to the query server
NICE = 5
#: backoff after a batch failed with the service down: initial and maximum, seconds
OUTAGE_BACKOFF_INITIAL = 1.0
OUTAGE_BACKOFF_MAX = 60.0
#: a batch that fails counts as the input's fault (split it, use attempts) when some other
#: batch succeeded within this many seconds before it was sent, or at any time since
HEALTH_WINDOW = 120.0


class CpuWatch:
    """Is the machine busy (or idle) with work other than ours? Sampled at most once a second."""

    def __init__(self, threshold_percent: float, idle_percent: float = 0.0) -> None:
        self.threshold = threshold_percent
        self.idle_threshold = idle_percent
        self.me = psutil.Process()
        self.ncpu = psutil.cpu_count() or 1
        self.next_sample = 0.0
        self.others = 0.0
        psutil.cpu_percent(None)  # prime both counters: the first call has no interval
        self.me.cpu_percent(None)

    def busy(self, now: float) -> bool:
        return self._sample(now) > self.threshold

    def idle(self, now: float) -> bool:
        """Other processes use less than `idle_percent` of the machine."""
        return self._sample(now) < self.idle_threshold

    def _sample(self, now: float) -> float:
        if now >= self.next_sample:
            self.next_sample = now + 1.0
            # Our own use does not count: an embedder must not yield to itself.
            self.others = max(0.0, psutil.cpu_percent(None) - self.me.cpu_percent(None) / self.ncpu)
        return self.others


class EState(enum.Enum):
    STARTING = "starting"
    AWAKE = "awake"
    DRAINING = "draining"  # asked to sleep: claims nothing, finishes the work in hand
    ASLEEP = "asleep"  # nothing in hand, model unloaded


@dataclass
class Job:
    ids: list[int]
    texts: list[str]
    submitted: float
    future: cf.Future = field(repr=False, default=None)  # type: ignore[assignment]
    timer: float = field(default_factory=time.perf_counter)  # for the batch duration in /metrics


class Embedder(Role):
    role = "embedder"

    def __init__(self, cfg: Config, ctx: zmq.Context, *, name: str | None = None) -> None:
        super().__init__(cfg, ctx, name=name)
        self.state = EState.STARTING
        # Opened by initialize(); shutdown() closes what is not None.
        self.store: Store | None = None
        self.model: Model | None = None
        self.push: zmq.Socket | None = None  # vectors to the indexer
        self.pool: cf.ThreadPoolExecutor | None = None
        self.cpu: CpuWatch | None = None
        self.owner = ""  # the lease owner: name, pid and a random tag
        self.jobs: list[Job] = []
        self.outbox: deque[tuple[list[int], list]] = deque()  # (ids, frames) not yet handed to zmq
        self.next_claim = 0.0
        self.last_work = 0.0  # last time work was in hand or claimed (or we woke)
        self.last_success = float("-inf")  # last batch the backend embedded
        self.last_queries = float("-inf")  # last time the supervisor relayed query traffic
        self.next_check = 0.0  # next pending-count check while asleep
        self.next_renew = 0.0
        self.work_notified = False  # `roxi ingest` or `roxi resume` said there is work
        self.outage_backoff = 0.0
        self.probe_size = 0  # while the service looks down: claim this few chunks (0: no limit)
        self.embedded = self.batches = self.yields = self.failed = self.splits = 0
        self.batch_seconds = Histogram()  # submit to vectors, per batch (for /metrics)
        self.cores = 1  # batches a local model may embed at once on an idle machine
        self.workers = 1  # batches allowed in flight now
        self.mode = "one"  # why: "all" cores, "one" (queries or a busy machine), "service"

    def initialize(self) -> None:
        ecfg = self.cfg.embedder
        self.store = Store.open(self.cfg)
        self.model = make_embedder(self.cfg, share=rate_share(self.cfg, "embedder"))
        self.store.ensure_model(self.model.model_id, self.model.dim)
        self.model.load()  # a missing or corrupt model is a boot failure, not a batch failure
        self.owner = f"{self.name}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.push = protocol.configure(self.ctx.socket(zmq.PUSH), hwm=VECTORS_HWM)
        self.push.connect(self.cfg.endpoint("vectors"))
        # Every core between the embedder processes (embedder.count) unless set.
        self.cores = ecfg.idle_workers or max(1, len(os.sched_getaffinity(0)) // ecfg.count)
        self.workers = self.model.max_in_flight
        self.mode = "one" if self.model.local_compute else "service"
        capacity = max(self.model.max_in_flight, self.cores if self.model.local_compute else 1)
        self.pool = cf.ThreadPoolExecutor(max_workers=capacity, thread_name_prefix="embed")
        now = time.monotonic()
        self.last_work = now
        self.next_renew = now + ecfg.lease_seconds / 3
        self.cpu = CpuWatch(ecfg.busy_cpu_percent, ecfg.idle_cpu_percent)
        self.state = EState.AWAKE

    # --- main loop ---------------------------------------------------------------
    def loop(self, now: float) -> None:
        self._collect(now)
        self._flush(0)
        if self.jobs or self.outbox:
            self.last_work = now  # idle time counts from the last work in hand, not the last claim
        elif self.state is EState.DRAINING:
            self.sleep(now)
        if now >= self.next_renew:
            self._renew(now)
        if self.state is EState.ASLEEP:
            self._doze(now)
            return
        # Claim until every allowed batch is out (the wait below returns only when one ends).
        while self.state is EState.AWAKE and not self.outbox and len(self.jobs) < self._workers(now) \
                and now >= self.next_claim:
            out = len(self.jobs)
            self._claim(now)
            if len(self.jobs) == out:
                break  # nothing to claim, paused, or the machine busy: next_claim says when
        self._wait()

    def _workers(self, now: float) -> int:
        """Batches allowed in flight now: a service's own number; for a local model one
        per core while no query came within yield_seconds and the machine is otherwise
        idle, else one (a core left to the query server and to others)."""
        if self.model.local_compute:
            quiet = now - self.last_queries >= self.cfg.embedder.yield_seconds
            self._set_workers(self.cores if quiet and self.cpu.idle(now) else 1)
        return self.workers

    def _set_workers(self, workers: int) -> None:
        if workers != self.workers:  # debug: intermittent queries switch every yield_seconds
            log.debug("embedding %d batch(es) at once", workers)
            self.model.set_parallel(workers)
        self.workers = workers
        self.mode = "all" if workers > 1 else "one"

    def _wait(self) -> None:
        """Block until a job finishes, zmq can take a result, or the poll timeout passes."""
        timeout = self.poll_timeout()
        if self.outbox:
            self._flush(timeout)
        elif self.jobs:
            cf.wait([j.future for j in self.jobs], timeout=timeout, return_when=cf.FIRST_COMPLETED)
        else:
            time.sleep(max(0.0, min(timeout, self.next_claim - time.monotonic())))

    def _claim(self, now: float) -> None:
        ecfg = self.cfg.embedder
        if self.cpu.busy(now):
            self.yields += 1  # the machine is busy with other work: leave it the CPU
            self.next_claim = now + ecfg.yield_pause_seconds
            return
        if self.store.paused():  # `roxi pause`: claim nothing; what is in flight still commits
            self.next_claim = now + ecfg.poll_seconds
            if now - self.last_work >= ecfg.idle_seconds:
                self.sleep(now)
            return
        serving = now - self.last_queries < ecfg.yield_seconds
        size = ecfg.yield_batch_size if serving else ecfg.batch_size
        if self.probe_size:
            size = min(size, self.probe_size)
        batch = self.store.claim(self.owner, size, now=time.time(), lease_seconds=ecfg.lease_seconds)
        if not batch:
            if now - self.last_work >= ecfg.idle_seconds:
                self.sleep(now)
            self.next_claim = now + ecfg.poll_seconds
            return
        self.last_work = now
        self.yields += serving
        pause = max(ecfg.pause_seconds, ecfg.yield_pause_seconds) if serving else ecfg.pause_seconds
        self.next_claim = now + pause
        self._submit([cid for cid, _ in batch], [text for _, text in batch], now)

    def _submit(self, ids: list[int], texts: list[str], now: float) -> None:
        job = Job(ids, texts, now)
        job.future = self.pool.submit(self.model.encode, texts)
        self.jobs.append(job)

    def _collect(self, now: float) -> None:
        for job in [j for j in self.jobs if j.future.done()]:
            self.jobs.remove(job)
            try:
                vectors = job.future.result()
            except Exception as exc:
                self._failed(job, exc, now)
                continue
            self.last_success = now
            self.outage_backoff = 0.0
            self.probe_size = 0
            frames = protocol.vectors_message(job.ids, vectors, model_id=self.model.model_id, sender=self.owner)
            self.outbox.append((job.ids, frames))
            self.embedded += len(job.ids)
            self.batches += 1
            self.batch_seconds.observe(time.perf_counter() - job.timer)

    def _failed(self, job: Job, exc: BaseException, now: float) -> None:
        ecfg = self.cfg.embedder
        message = f"{type(exc).__name__}: {exc}"[:500]
        input_error = isinstance(exc, EmbedError) and exc.input_error
        service_healthy = self.last_success >= job.submitted - HEALTH_WINDOW
        if len(job.ids) > 1 and (input_error or service_healthy):
            # Find the culprit: the leases are still ours, so the halves need no new claim.
            self.splits += 1
            half = len(job.ids) // 2
            log.warning("batch of %d failed (%s); splitting to isolate the failing chunk", len(job.ids), message)
            self._submit(job.ids[:half], job.texts[:half], now)
            self._submit(job.ids[half:], job.texts[half:], now)
            return
        if len(job.ids) == 1 and (input_error or service_healthy):
            failed = self.store.release(job.ids, owner=self.owner, error=message, max_attempts=ecfg.max_attempts)
            self.failed += failed
            log.warning("chunk %d failed (%s)%s", job.ids[0], message,
                        "; marked failed, see `roxi retry-failed`" if failed else "; will retry")
            return
        # The service looks down: give the batch back without using an attempt, and wait.
        # Probe with half as many chunks next time: if the "outage" is really one bad chunk
        # (nothing has succeeded yet to tell), a probe without it succeeds and proves the
        # service healthy; if the service is down, probes shrink to one chunk per backoff.
        self.store.release(job.ids, owner=self.owner, error=message, count_attempt=False)
        self.probe_size = max(1, len(job.ids) // 2)
        self.outage_backoff = min(OUTAGE_BACKOFF_MAX, max(OUTAGE_BACKOFF_INITIAL, self.outage_backoff * 2))
        self.next_claim = now + self.outage_backoff
        log.warning("embedding failed with the service apparently down (%s); backing off %.1f s",
                    message, self.outage_backoff)

    def _renew(self, now: float) -> None:
        ids = [cid for job in self.jobs for cid in job.ids] + [cid for ids, _ in self.outbox for cid in ids]
        if ids:
            self.store.renew(ids, owner=self.owner, now=time.time(), lease_seconds=self.cfg.embedder.lease_seconds)
        self.next_renew = now + self.cfg.embedder.lease_seconds / 3

    def _flush(self, timeout: float) -> None:
        """Hand finished batches to zmq while the indexer can take them."""
        while self.outbox:
            if timeout and not self.push.poll(int(timeout * 1000), zmq.POLLOUT):
                return
            try:
                self.push.send_multipart(self.outbox[0][1], flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return  # indexer busy or down; the renewed lease keeps the chunks ours
            self.outbox.popleft()

    def _doze(self, now: float) -> None:
        """Asleep: look for work now and then with a count query; the model stays unloaded."""
        if self.work_notified or now >= self.next_check:
            self.work_notified = False
            self.next_check = now + self.cfg.embedder.wake_check_seconds
            if not self.store.paused() and self.store.pending_count(now=time.time()) > 0:
                self.wake(now)
                return
        self.idle(self.poll_timeout())

    def next_duty(self) -> float:
        return self.next_check  # asleep: the next look for work

    # --- sleep and wake ----------------------------------------------------------
    def sleep(self, now: float) -> None:
        """Sleep now, or once the work in hand is handed on (until then: DRAINING, `running`)."""
        if self.state is EState.ASLEEP:
            return
        if self.jobs or self.outbox:
            if self.state is not EState.DRAINING:
                log.info("going to sleep once the %d chunks in hand are embedded and handed on",
                         sum(len(j.ids) for j in self.jobs) + sum(len(ids) for ids, _ in self.outbox))
            self.state = EState.DRAINING
            return
        self.state = EState.ASLEEP
        self.next_check = now + self.cfg.embedder.wake_check_seconds
        if self.cfg.supervisor.suspend:
            # An unloaded model leaves ~50 MB of its runtime behind: exit instead (SUSPENDED).
            self.suspend = True
            log.info("asleep (no work for %.0f s): exiting until there is work", now - self.last_work)
            return
        self._unload()
        log.info("asleep (no work for %.0f s): model unloaded", now - self.last_work)

    def _unload(self) -> None:
        self.model.unload()
        memory.release()

    def wake(self, now: float) -> None:
        if self.state is EState.AWAKE:
            return
        try:
            self.model.load()
        except ConfigError as exc:  # the model vanished or changed while we slept
            log.error("cannot load the model: %s", exc)
            raise
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
        elif op in ("work", "resume"):  # `roxi ingest` added chunks, or `roxi resume`: look at once
            self.work_notified = True
            self.next_claim = min(self.next_claim, now)
        elif op == "queries":  # the query server is serving: yield to it for a while
            self.last_queries = now
            if self.model is not None and self.model.local_compute:
                self._set_workers(1)  # running batches narrow within one model call

    def state_name(self) -> str:
        if self.state is EState.STARTING:
            return "starting"
        # DRAINING is running: requests in flight, retrying or backing off, are work.
        return "asleep" if self.state is EState.ASLEEP else "running"

    def info(self) -> dict:
        if (state := self.state_name()) == "starting":
            return {"state": state}
        return {"state": state,
                "paused": self.store.paused(), "embedded": self.embedded, "batches": self.batches, "yields": self.yields,
                "failed": self.failed, "splits": self.splits, "in_flight": sum(len(j.ids) for j in self.jobs),
                "backoff_seconds": self.outage_backoff,  # 0 unless the service looks down
                "model_loaded": self.model.loaded, "model_id": self.model.model_id,
                "concurrency": {"mode": self.mode, "workers": self.workers, "cores": self.cores},
                "backend": self.model.status(), "metrics": {"batch_seconds": self.batch_seconds.as_dict()}}

    def shutdown(self) -> None:
        if self.pool is not None:
            # In-flight requests are abandoned, not awaited: their leases lapse and the
            # chunks are embedded again (a stop must not wait out a rate-limit pause).
            self.pool.shutdown(wait=False, cancel_futures=True)
        # Best effort and short (a SIGKILLed supervisor expects its children gone within
        # 2 s): whatever is not delivered returns to pending when its lease expires.
        if self.outbox:
            self._flush(SHUTDOWN_FLUSH_SECONDS)
        if self.push is not None:
            self.push.close(linger=int(SHUTDOWN_FLUSH_SECONDS * 1000))
        if self.store is not None:
            self.store.close()


def main(argv: list[str] | None = None) -> int:
    # The process's priority, set where the process starts: in initialize() it reniced
    # whatever process ran the role, pytest's included (5 more per unit test, up to 19).
    with contextlib.suppress(OSError):  # a lower priority is a courtesy, not a need
        os.nice(NICE)
    code = run(Embedder, argv)
    # A worker thread may be inside a long API retry; the interpreter would join it at exit.
    # Everything durable is already done (leases lapse by themselves), so leave at once.
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
