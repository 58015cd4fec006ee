"""Client-side rate limiting for paid APIs: requests and tokens per minute, never exceeded.

An API that bills per token also refuses work above its request and token rates, and a
refusal (HTTP 429) costs a round trip and a pause for every worker. `RateLimiter` keeps a
client under both limits before it sends anything: every request first takes one token
from a requests bucket and its estimated size from a tokens bucket, and waits (bounded)
until both allow it. The requests bucket holds a single token, so request starts are
spaced `60 / requests_per_minute` seconds apart and no 60-second window ever holds more
than `requests_per_minute` of them, however bursty the callers. The tokens bucket allows
a one-second burst and refills slower by that burst, so tokens taken in any 60-second
window never add up to more than `tokens_per_minute` either. A server's Retry-After is
shared through `pause_until`: once one worker is told to back off, all of them do.

Buckets are kept as the time at which they will be full again (the "theoretical arrival
time" of GCRA) rather than as a token count, so a reservation is one comparison and one
addition, and taking more than is there simply schedules the caller later (a debt). An
oversize request is therefore delayed, never refused forever.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable

from .embedders.base import EmbedError
from .errors import ConfigError

#: length of the window the API's limits are counted over, seconds (60)
SECONDS_PER_MINUTE = 60.0
#: burst of the tokens bucket, in seconds of the per-minute budget (1.0)
TOKEN_BURST_SECONDS = 1.0
#: time added to every reservation, seconds (1e-6): a sum of float intervals can come out
#: a few ulps short of the exact spacing, and the limit must never be exceeded
GUARD_SECONDS = 1e-6

Clock = Callable[[], float]
Sleep = Callable[[float], None]


def _positive(name: str, value: float) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class TokenBucket:
    """rate tokens/second refill, capacity tokens max; thread-safe; injectable clock.

    `reserve(n)` takes `n` tokens at once and answers how long the caller must wait before
    acting; the tokens are the caller's from then on, so later callers queue behind it.
    """

    def __init__(self, *, rate: float, capacity: float, clock: Clock = time.monotonic) -> None:
        self.rate = _positive("rate", rate)
        self.capacity = _positive("capacity", capacity)
        self._clock = clock
        self._lock = threading.Lock()
        # The bucket is full from `_full_at` on; before it, it lacks (_full_at - t) * rate.
        self._full_at = float("-inf")
        self._blocked_until = float("-inf")

    def reserve(self, n: float) -> float:
        """Take `n` tokens now (the level may go negative: a debt later callers pay) and
        return the seconds the caller must wait before acting. `n` above `capacity` is
        allowed: the caller waits until the missing tokens have been earned."""
        with self._lock:
            now = self._clock()
            start = self._earliest(n, now)
            self._take(n, start, now)
            return start - now

    def block_until(self, t: float) -> None:
        """Nobody gets tokens before clock time `t` (a server's Retry-After)."""
        with self._lock:
            self._block(t)

    @property
    def blocked_until(self) -> float:
        """Clock time before which no reservation starts (-inf when never blocked)."""
        return self._blocked_until

    # The three helpers below assume the caller holds the lock that guards this bucket:
    # its own, or a RateLimiter's, which must reserve on two buckets as one step.

    def _earliest(self, n: float, now: float) -> float:
        """Earliest clock time >= now at which `n` tokens can be taken."""
        # A pause leaves the bucket full at its end: tokens are not earned twice over.
        base = max(self._full_at, now, self._blocked_until)
        return max(base + (n - self.capacity) / self.rate, now, self._blocked_until)

    def _take(self, n: float, at: float, now: float) -> None:
        """Take `n` tokens at clock time `at` (>= `_earliest(n, now)`)."""
        base = max(self._full_at, now, self._blocked_until)
        # An oversize take waited for its excess: that excess is not owed a second time.
        excess = max(0.0, n - self.capacity) / self.rate
        self._full_at = max(base, at - excess) + n / self.rate + GUARD_SECONDS

    def _block(self, t: float) -> None:
        self._blocked_until = max(self._blocked_until, t)


class RateLimiter:
    """requests/minute and tokens/minute buckets together; acquire(tokens, *, timeout)
    waits (bounded by timeout, raising EmbedError when it cannot be met) until both allow
    the request. Thread-safe: share one limiter between all workers of a client."""

    def __init__(
        self,
        *,
        requests_per_minute: float,
        tokens_per_minute: float,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
    ) -> None:
        rpm = _positive("requests_per_minute", requests_per_minute)
        tpm = _positive("tokens_per_minute", tokens_per_minute)
        self.requests_per_minute = rpm
        self.tokens_per_minute = tpm
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        # Capacity 1: requests are spaced 60/rpm apart, with no burst after an idle spell.
        self._requests = TokenBucket(rate=rpm / SECONDS_PER_MINUTE, capacity=1.0, clock=clock)
        burst = tpm * TOKEN_BURST_SECONDS / SECONDS_PER_MINUTE
        # A window can start with a full bucket: refilling the rest of the minute's budget
        # (not all of it) in the following 60 s keeps every window within tokens_per_minute.
        self._tokens = TokenBucket(
            rate=(tpm - burst) / SECONDS_PER_MINUTE, capacity=burst, clock=clock
        )

    def acquire(self, tokens: int, *, timeout: float) -> float:
        """Wait until one more request of `tokens` tokens may start; return the seconds the
        caller was held back (its scheduled start minus its arrival).

        Raises EmbedError at once, without taking anything, when the start would lie more
        than `timeout` seconds away; `input_error` is set when even an idle limiter could
        never fit `tokens` within `timeout` (only a smaller batch can pass)."""
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens!r}")
        arrival: float | None = None
        while True:
            with self._lock:
                now = self._clock()
                if arrival is None:
                    arrival = now
                    deadline = now + timeout
                start = max(self._requests._earliest(1, now), self._tokens._earliest(tokens, now))
                if start > deadline:
                    self._refuse(tokens, start - now, timeout)
                # Both buckets are charged at the common start: charging the requests
                # bucket at its own (earlier) time would let the next request start
                # less than one spacing after this one.
                self._requests._take(1, start, now)
                self._tokens._take(tokens, start, now)
            if start > now:
                self._sleep(start - now)
            # A pause declared while we slept (another worker's 429) voids our slot: queue
            # again behind it. The old slot stays spent, which only errs on the slow side.
            if self._clock() >= self.paused_until:
                return start - arrival

    def charge(self, tokens: float) -> None:
        """Add `tokens` used beyond an estimate to the tokens bucket, without waiting: the
        debt delays later requests instead."""
        if tokens <= 0:
            return
        with self._lock:
            now = self._clock()
            self._tokens._take(tokens, max(now, self._tokens.blocked_until), now)

    def pause_until(self, t: float) -> None:
        """No request starts before clock time `t` (Retry-After, for every worker)."""
        with self._lock:
            self._requests._block(t)
            self._tokens._block(t)

    @property
    def paused_until(self) -> float:
        """Clock time before which no request starts (-inf when never paused)."""
        return self._requests.blocked_until

    def pause_left(self) -> float:
        """Seconds of the current pause still to run, 0 when not paused."""
        return max(0.0, self.paused_until - self._clock())

    def _refuse(self, tokens: int, wait: float, timeout: float) -> None:
        burst, rate = self._tokens.capacity, self._tokens.rate
        never = tokens > burst and (tokens - burst) / rate > timeout
        raise EmbedError(
            f"rate limit: a request of {tokens} tokens would wait {wait:.1f} s, more than "
            f"the {timeout:g} s allowed"
            + (" even at an idle limiter; send a smaller batch" if never else ""),
            input_error=never,
        )
