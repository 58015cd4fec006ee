"""Unit tests of the token buckets and the rate limiter, on a fake clock and on real threads."""

from __future__ import annotations

import bisect
import random
import threading
import time

import pytest

from roxi_mp.embedders.base import EmbedError
from roxi_mp.errors import ConfigError
from roxi_mp.ratelimit import RateLimiter, TokenBucket
from tests.conftest import FakeClock


def limiter(clock: FakeClock, *, rpm: float = 60.0, tpm: float = 1e12) -> RateLimiter:
    return RateLimiter(requests_per_minute=rpm, tokens_per_minute=tpm, clock=clock, sleep=clock.sleep)


def max_in_window(times: list[float], seconds: float) -> int:
    times = sorted(times)
    return max(bisect.bisect_left(times, t + seconds) - i for i, t in enumerate(times))


def max_sum_in_window(events: list[tuple[float, float]], seconds: float) -> float:
    events = sorted(events)
    times = [t for t, _ in events]
    prefix = [0.0]
    for _, n in events:
        prefix.append(prefix[-1] + n)
    return max(prefix[bisect.bisect_left(times, t + seconds)] - prefix[i] for i, t in enumerate(times))


# --- TokenBucket ------------------------------------------------------------------------
def test_bucket_bursts_to_capacity_then_goes_into_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10.0, capacity=5.0, clock=clock)
    # (abs=1e-4: every reservation also costs a 1 us guard against float rounding)
    assert [bucket.reserve(1) for _ in range(5)] == pytest.approx([0.0] * 5, abs=1e-4)
    assert bucket.reserve(1) == pytest.approx(0.1, abs=1e-4)
    assert bucket.reserve(2) == pytest.approx(0.3, abs=1e-4)  # queues behind the previous debt
    clock.now += 10.0  # long idle: full again, but never beyond capacity
    assert bucket.reserve(5) == pytest.approx(0.0, abs=1e-4)
    assert bucket.reserve(1) == pytest.approx(0.1, abs=1e-4)


def test_bucket_oversize_request_waits_instead_of_being_refused() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10.0, capacity=5.0, clock=clock)
    assert bucket.reserve(25) == pytest.approx(2.0, abs=1e-4)  # the 20 missing tokens take 2 s
    clock.now += 2.0
    # It paid for its excess by waiting: the next one only waits for its own tokens.
    assert bucket.reserve(1) == pytest.approx(0.1, abs=1e-4)


def test_bucket_block_until_holds_everyone() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, capacity=1.0, clock=clock)
    bucket.block_until(clock.now + 5)
    assert bucket.reserve(1) == pytest.approx(5.0, abs=1e-4)
    assert bucket.reserve(1) == pytest.approx(6.0, abs=1e-4)  # still spaced after the pause
    bucket.block_until(clock.now + 1)  # an earlier end never shortens a pause
    assert bucket.blocked_until == pytest.approx(clock.now + 5)


@pytest.mark.parametrize("kwargs", [{"rate": 0, "capacity": 1}, {"rate": 1, "capacity": -1},
                                    {"rate": float("nan"), "capacity": 1}, {"rate": True, "capacity": 1}])
def test_bucket_refuses_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        TokenBucket(**kwargs)


# --- RateLimiter ------------------------------------------------------------------------
def test_requests_are_spaced_without_burst() -> None:
    clock = FakeClock()
    rl = limiter(clock, rpm=120)  # one every 0.5 s
    starts = []
    for _ in range(5):
        rl.acquire(1, timeout=10)
        starts.append(clock.now)
    assert starts[0] == 1000.0
    assert all(b - a >= 0.5 for a, b in zip(starts, starts[1:]))
    assert starts[-1] - starts[0] == pytest.approx(2.0, abs=1e-4)
    clock.now += 3600  # an idle hour earns no burst: the next two are still spaced
    rl.acquire(1, timeout=10)
    t = clock.now
    assert rl.acquire(1, timeout=10) == pytest.approx(0.5, abs=1e-4)
    assert clock.now - t >= 0.5


@pytest.mark.parametrize("rpm", [7, 100, 3000])
def test_no_60s_window_holds_more_than_rpm_requests(rpm: float) -> None:
    """1000 acquisitions in bursts separated by random idle spells, the worst case for a
    bucket that allows bursts; every sliding 60 s window must hold at most rpm starts."""
    rng = random.Random(rpm)
    clock = FakeClock(start=rng.uniform(0, 1e6))
    rl = limiter(clock, rpm=rpm)
    starts = []
    for _ in range(1000):
        if rng.random() < 0.05:
            clock.now += rng.uniform(0, 90)  # idle spell
        rl.acquire(1, timeout=1e9)
        starts.append(clock.now)
    assert max_in_window(starts, 60.0) <= rpm
    assert max_in_window(starts, 60.0 * 10 / rpm) <= 10  # at every scale, not just per minute


def test_tokens_per_minute_is_never_exceeded_and_mostly_used() -> None:
    rng = random.Random(7)
    clock = FakeClock()
    rl = limiter(clock, rpm=1e9, tpm=6000)  # burst of 100 tokens
    taken = []
    for _ in range(1000):
        n = rng.randint(1, 100)
        rl.acquire(n, timeout=1e9)
        taken.append((clock.now, n))
    assert max_sum_in_window(taken, 60.0) <= 6000
    minutes = (taken[-1][0] - taken[0][0]) / 60
    assert sum(n for _, n in taken) / minutes > 0.95 * 6000  # not needlessly slow


def test_request_spacing_holds_when_tokens_are_the_bottleneck() -> None:
    """A request held back by the tokens bucket must still leave a full spacing before the
    next one, even a tiny next one that the tokens bucket would let through at once."""
    rng = random.Random(3)
    clock = FakeClock()
    rl = limiter(clock, rpm=60, tpm=600)  # 1 s apart; 10-token burst, ~9.8 tokens/s
    starts, taken = [], []
    for _ in range(300):
        n = rng.choice([1, 1, 2, 30])
        rl.acquire(n, timeout=1e9)
        starts.append(clock.now)
        taken.append((clock.now, n))
    assert min(b - a for a, b in zip(starts, starts[1:])) >= 1.0
    assert max_in_window(starts, 60.0) <= 60
    assert max_sum_in_window(taken, 60.0) <= 600 + 30  # + one oversize request's debt


def test_charge_delays_later_requests() -> None:
    clock = FakeClock()
    rl = limiter(clock, rpm=1e9, tpm=6000)  # burst 100, refill 5900/min
    rl.acquire(100, timeout=10)
    rl.charge(590)  # the estimate was 590 tokens short: 6 s of refill owed
    assert rl.acquire(1, timeout=10) == pytest.approx(6.0 + 60 / 5900, abs=1e-3)


def test_pause_until_delays_everyone_queued_or_not() -> None:
    clock = FakeClock()
    rl = limiter(clock, rpm=60)  # one a second
    rl.acquire(1, timeout=100)
    start = clock.now
    slept = False

    def sleep_through_a_429(seconds: float) -> None:
        # While this caller waits for its slot, another worker is told to back off 10 s.
        nonlocal slept
        if not slept:
            slept = True
            rl.pause_until(clock.now + 10)
        clock.sleep(seconds)

    rl._sleep = sleep_through_a_429
    waited = rl.acquire(1, timeout=100)
    assert clock.now >= start + 10
    assert waited == pytest.approx(clock.now - start, abs=1e-4)
    assert rl.pause_left() == 0.0
    t = clock.now
    rl.acquire(1, timeout=100)
    assert clock.now - t >= 1.0  # spacing holds after the pause too


def test_pause_until_delays_a_new_caller() -> None:
    clock = FakeClock()
    rl = limiter(clock, rpm=6000)
    rl.pause_until(clock.now + 2.5)
    assert rl.pause_left() == pytest.approx(2.5)
    assert rl.acquire(1, timeout=10) == pytest.approx(2.5)


def test_acquire_timeout_raises_at_once_and_takes_nothing() -> None:
    clock = FakeClock()
    rl = limiter(clock, rpm=1)  # one a minute
    rl.acquire(1, timeout=1)
    with pytest.raises(EmbedError) as info:
        rl.acquire(1, timeout=5)
    assert not info.value.input_error
    assert clock.now == 1000.0  # refused without sleeping
    assert rl.acquire(1, timeout=61) == pytest.approx(60.0, abs=1e-4)  # the refusal took no slot


def test_acquire_too_big_for_any_wait_is_an_input_error() -> None:
    clock = FakeClock()
    rl = limiter(clock, rpm=60, tpm=600)  # burst 10, refill 590/min
    with pytest.raises(EmbedError) as info:
        rl.acquire(5000, timeout=60)
    assert info.value.input_error
    assert "smaller batch" in str(info.value)


def test_limiter_refuses_bad_parameters() -> None:
    with pytest.raises(ConfigError):
        RateLimiter(requests_per_minute=0, tokens_per_minute=1)
    with pytest.raises(ConfigError):
        RateLimiter(requests_per_minute=1, tokens_per_minute=float("inf"))


def test_real_threads_never_violate_spacing() -> None:
    """8 threads x 10 acquisitions at 6000 rpm (10 ms apart) on the real clock: all finish
    and no two scheduled starts are closer than the spacing."""
    local = threading.local()

    def clock() -> float:
        now = time.monotonic()
        if getattr(local, "arrival", None) is None:
            local.arrival = now  # the first reading of an acquire() is its arrival
        return now

    rl = RateLimiter(requests_per_minute=6000, tokens_per_minute=1e12, clock=clock)
    starts: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            local.arrival = None
            waited = rl.acquire(1, timeout=5)
            with lock:
                starts.append(local.arrival + waited)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)  # a hang guard: about 0.8 s on an idle machine
    assert not any(t.is_alive() for t in threads)
    assert len(starts) == 80
    starts.sort()
    assert min(b - a for a, b in zip(starts, starts[1:])) >= 0.01 - 1e-9
    assert time.monotonic() - t0 >= 79 * 0.01 - 0.02
