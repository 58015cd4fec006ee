"""Request sizing for the HTTP backend: texts per request and requests at once, adapted as TCP does.

A request carrying more texts than the service can embed before the client's timeout is
paid for by the server and thrown away by the client, and sending it again unchanged
throws it away again. `AdaptiveSizer` sizes requests from what the replies show instead,
so that each one finishes well inside the timeout: within T = target_fraction x timeout.

- Start at `initial_batch` texts and `max_concurrency` requests at once. Slow start: while
  full-size replies come fast, the batch doubles, but never past what the measured latency
  per text fits into FAST_SHARE x T.
- A reply of n texts after d seconds measures l = d / n seconds per text.
- Congestion (a timeout, or a reply slower than T): multiplicative decrease. The batch
  halves (a timeout: half the timed-out request; a slow reply: down to what fits T, but by
  at most half), the concurrency halves, slow start ends.
- A fast reply to a full-size request (l x (batch + 1) <= FAST_SHARE x T): additive
  increase, the batch by one text; once the batch is at its maximum, or requests carry
  fewer texts than it allows (the calls had no more), the concurrency by one request.
  Between fast and slow the sizes hold: the gap keeps them from flapping around T.
- One decrease per epoch, as TCP reduces once per window: a request sent before the last
  decrease was sized under the old rule, so its timeout or slowness changes nothing, and
  four requests timing out together halve the batch once, not four times. Nor does its
  fast reply make anything grow.
- A timeout of a request sent above the floor (more than `min_batch` texts, or more than
  one request at once) is the size's fault, not the service's: the caller re-sends its
  texts smaller without counting a failed attempt. At the floor it is a failed attempt.
- After a timeout, nothing is sent for a while (TCP's retransmission timeout): a server
  computes what it was given whether or not the client still waits, and a request sent at
  once would queue behind that abandoned work and time out in turn. The pause is the
  timeout itself, doubled with each timeout in a row (up to `max_pause`).

`AdaptiveSizer` is pure: no I/O, no threads, an injected clock. `HttpEmbedder` calls it
under its own lock, logs the changes it returns and applies the pauses. `Gate` is the
resizable semaphore that holds requests to the current `concurrency`.
"""

from __future__ import annotations

import collections
import math
import threading
from dataclasses import dataclass
from typing import Callable

from ..errors import ConfigError

#: share of T a full-size request must be predicted to take for the sizes to grow (0.75)
FAST_SHARE = 0.75
#: weight of the newest sample in the latency per text shown in status (0.3)
LATENCY_WEIGHT = 0.3
#: seconds of replies the throughput in status is averaged over (60)
THROUGHPUT_WINDOW = 60.0


@dataclass(frozen=True)
class Verdict:
    """What a timeout means: re-send the texts smaller without an attempt (`free`), the
    changes made (log lines), and the seconds nothing should be sent (`pause`)."""

    free: bool
    changes: list[str]
    pause: float


@dataclass(frozen=True)
class Ticket:
    """One request as sent: its texts, when (clock time), the epoch and concurrency then."""

    n: int
    sent: float
    epoch: int
    concurrency: int


class AdaptiveSizer:
    """The current `batch` (texts per request) and `concurrency` (requests at once)."""

    def __init__(self, *, min_batch: int, max_batch: int, initial_batch: int, max_concurrency: int,
                 timeout_seconds: float, target_fraction: float, max_pause: float,
                 clock: Callable[[], float]) -> None:
        for name, value in (("min_batch_size", min_batch), ("max_batch_size", max_batch),
                            ("initial_batch_size", initial_batch), ("max_in_flight", max_concurrency)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"http {name} must be an integer >= 1, got {value!r}")
        if not isinstance(target_fraction, (int, float)) or isinstance(target_fraction, bool) \
                or not 0 < target_fraction <= 1:
            raise ConfigError(f"http target_fraction must be a number in (0, 1], got {target_fraction!r}")
        # The role may claim fewer texts than min_batch_size or initial_batch_size (a small
        # embedder.batch_size): the maximum wins.
        self.max_batch = max_batch
        self.min_batch = min(min_batch, max_batch)
        self.max_concurrency = max_concurrency
        self.target = target_fraction * timeout_seconds
        self.timeout_seconds = timeout_seconds
        self.batch = min(max(initial_batch, self.min_batch), self.max_batch)
        self.concurrency = self.max_concurrency
        self.slow_start = True
        self.epoch = 0
        self.max_pause = max_pause
        self.timeouts_in_a_row = 0  # counted once per epoch, like the decreases
        self.latency: float | None = None  # seconds per text, smoothed (status only)
        self._clock = clock
        self._since: float | None = None  # first request: the throughput's window starts here
        self._done: collections.deque[tuple[float, int]] = collections.deque()  # (reply time, texts)

    # --- events ------------------------------------------------------------------------
    def send(self, n: int) -> Ticket:
        """A request of `n` texts leaves now."""
        now = self._clock()
        if self._since is None:
            self._since = now
        return Ticket(n, now, self.epoch, self.concurrency)

    def replied(self, ticket: Ticket) -> list[str]:
        """The request was answered; returns the changes made, as log lines."""
        now = self._clock()
        seconds = max(0.0, now - ticket.sent)
        per_text = seconds / ticket.n
        self._smooth(per_text)
        self._done.append((now, ticket.n))
        self.timeouts_in_a_row = 0
        if ticket.epoch != self.epoch:
            return []  # sized under the old rule: neither news of slowness nor of speed
        if seconds > self.target:
            fit = math.floor(self.target / per_text)
            why = f"after a slow reply ({seconds:.1f} s for {ticket.n} texts, {per_text:.2f} s/text)"
            return self._decrease(max(fit, self.batch // 2), why)
        return self._increase(ticket, per_text)

    def timed_out(self, ticket: Ticket) -> Verdict:
        """The request timed out: see Verdict."""
        free = ticket.n > self.min_batch or ticket.concurrency > 1
        per_text = self.timeout_seconds / ticket.n  # at least
        self._smooth(max(per_text, self.latency or 0.0))
        if ticket.epoch != self.epoch:
            return Verdict(free, [], 0.0)  # the pause its own decrease set covers it
        self.timeouts_in_a_row += 1
        pause = min(self.max_pause, self.timeout_seconds * 2.0 ** min(self.timeouts_in_a_row - 1, 32))
        return Verdict(free, self._decrease(ticket.n // 2, f"after a timeout (over {per_text:.2f} s/text)"), pause)

    # --- rules -------------------------------------------------------------------------
    def _decrease(self, batch: int, why: str) -> list[str]:
        self.epoch += 1
        self.slow_start = False
        changes = self._set(batch=max(self.min_batch, min(self.batch - 1, batch)),
                            concurrency=max(1, self.concurrency // 2))
        return [f"{what} {why}" for what in changes]

    def _increase(self, ticket: Ticket, per_text: float) -> list[str]:
        budget = FAST_SHARE * self.target
        if ticket.n >= self.batch and self.batch < self.max_batch:
            fits = math.floor(budget / per_text) if per_text > 0 else self.max_batch
            if fits <= self.batch:  # a full-size request is as large as the target allows
                self.slow_start = False
                return []
            step = self.batch if self.slow_start else 1
            batch = min(self.batch + step, fits, self.max_batch)
            self.slow_start = self.slow_start and batch == self.batch + step
            changes = self._set(batch=batch, concurrency=self.concurrency)
        elif per_text * self.batch <= budget:
            # The batch cannot grow (it is at its maximum, or the calls had no more texts
            # to send) and a full one would be fast: more requests at once instead.
            changes = self._set(batch=self.batch, concurrency=min(self.max_concurrency, self.concurrency + 1))
        else:
            return []
        return [f"{what} (replies fast, {per_text:.2f} s/text)" for what in changes]

    def _set(self, *, batch: int, concurrency: int) -> list[str]:
        changes = []
        if batch != self.batch:
            changes.append(f"batch size {self.batch} -> {batch}")
            self.batch = batch
        if concurrency != self.concurrency:
            changes.append(f"concurrency {self.concurrency} -> {concurrency}")
            self.concurrency = concurrency
        return changes

    def _smooth(self, per_text: float) -> None:
        if self.latency is None:
            self.latency = per_text
        else:
            self.latency += LATENCY_WEIGHT * (per_text - self.latency)

    # --- figures -----------------------------------------------------------------------
    def throughput(self) -> float:
        """Texts per second embedded over the last THROUGHPUT_WINDOW seconds (or since the
        first request, when that is sooner)."""
        now = self._clock()
        while self._done and self._done[0][0] < now - THROUGHPUT_WINDOW:
            self._done.popleft()
        if self._since is None or now <= self._since:
            return 0.0
        return sum(n for _, n in self._done) / min(THROUGHPUT_WINDOW, now - self._since)

    def status(self) -> dict:
        return {"batch_size": self.batch, "concurrency": self.concurrency,
                "seconds_per_text": None if self.latency is None else round(self.latency, 4),
                "texts_per_second": round(self.throughput(), 3)}


class Gate:
    """A semaphore whose size can change while it is held: at most `limit` holders at once.
    Lowering the limit takes no slot away; newcomers wait until enough holders have left.
    Waiters are served in arrival order, so a call never starves behind later ones."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = 0
        self._queue: collections.deque[object] = collections.deque()
        self._changed = threading.Condition()

    @property
    def limit(self) -> int:
        return self._limit

    def set_limit(self, limit: int) -> None:
        with self._changed:
            self._limit = limit
            self._changed.notify_all()

    def acquire(self, timeout: float) -> bool:
        """Take a slot, waiting at most `timeout` seconds; False when none came free."""
        me = object()
        with self._changed:
            self._queue.append(me)
            try:
                got = self._changed.wait_for(lambda: self._queue[0] is me and self._held < self._limit,
                                             timeout=timeout)
                if got:
                    self._held += 1
                return got
            finally:
                self._queue.remove(me)
                self._changed.notify_all()  # the next in line may go now (or was waiting on us)

    def release(self) -> None:
        with self._changed:
            self._held -= 1
            self._changed.notify_all()
