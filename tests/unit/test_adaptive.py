"""Unit tests of roxi_mp.embedders.adaptive: the AIMD request sizing and the resizable gate.

The sizer is pure, so each test plays replies and timeouts on a fake clock and checks the
sizes, exactly. Timeout 30 s and target 0.5 give T = 15 s: a full-size request grows the
sizes when predicted under 11.25 s (FAST_SHARE x T), shrinks them when it took over 15 s.
"""

from __future__ import annotations

import threading

import pytest

from roxi_mp.embedders.adaptive import FAST_SHARE, AdaptiveSizer, Gate, Verdict
from roxi_mp.errors import ConfigError
from tests.conftest import FakeClock, wait_until


def sizer(clock: FakeClock, **kwargs) -> AdaptiveSizer:
    options = {"min_batch": 1, "max_batch": 64, "initial_batch": 8, "max_concurrency": 4,
               "timeout_seconds": 30.0, "target_fraction": 0.5, "max_pause": 100.0, **kwargs}
    return AdaptiveSizer(clock=clock, **options)


def reply(s: AdaptiveSizer, clock: FakeClock, n: int, seconds: float) -> list[str]:
    ticket = s.send(n)
    clock.sleep(seconds)
    return s.replied(ticket)


def time_out(s: AdaptiveSizer, clock: FakeClock, n: int) -> tuple[bool, list[str]]:
    ticket = s.send(n)
    clock.sleep(s.timeout_seconds)
    verdict = s.timed_out(ticket)
    return verdict.free, verdict.changes


def test_slow_start_doubles_up_to_what_the_latency_fits() -> None:
    clock = FakeClock()
    s = sizer(clock)
    assert (s.batch, s.concurrency) == (8, 4)
    assert reply(s, clock, 8, 8 * 0.1) == ["batch size 8 -> 16 (replies fast, 0.10 s/text)"]
    reply(s, clock, 16, 16 * 0.1)
    assert s.batch == 32 and s.slow_start
    # 0.3 s/text: 64 would take 19.2 s; 11.25 s fits 37 texts. Slow start ends there.
    assert reply(s, clock, 32, 32 * 0.3) == ["batch size 32 -> 37 (replies fast, 0.30 s/text)"]
    assert s.batch == 37 and not s.slow_start
    assert reply(s, clock, 37, 37 * 0.3) == []  # 38 x 0.3 s > 11.25 s and 11.1 s < 15 s: hold


def test_a_timeout_halves_batch_and_concurrency_once_per_epoch() -> None:
    clock = FakeClock()
    s = sizer(clock, initial_batch=64)
    tickets = [s.send(64) for _ in range(4)]  # four requests out at once, all too large
    clock.sleep(30.0)
    verdict = s.timed_out(tickets[0])
    assert verdict == Verdict(True, ["batch size 64 -> 32 after a timeout (over 0.47 s/text)",
                                     "concurrency 4 -> 2 after a timeout (over 0.47 s/text)"], 30.0)
    for ticket in tickets[1:]:  # sent before the decrease: sized under the old rule
        assert s.timed_out(ticket) == Verdict(True, [], 0.0)
    assert (s.batch, s.concurrency, s.epoch) == (32, 2, 1)
    assert time_out(s, clock, 32)[1][0] == "batch size 32 -> 16 after a timeout (over 0.94 s/text)"
    assert (s.batch, s.concurrency) == (16, 1)


def test_timeouts_shrink_to_the_floor_where_they_stop_being_free() -> None:
    clock = FakeClock()
    s = sizer(clock, max_concurrency=2)
    assert time_out(s, clock, 8) == (True, ["batch size 8 -> 4 after a timeout (over 3.75 s/text)",
                                            "concurrency 2 -> 1 after a timeout (over 3.75 s/text)"])
    assert time_out(s, clock, 4)[0] and time_out(s, clock, 2)[0]
    assert (s.batch, s.concurrency) == (1, 1)
    assert time_out(s, clock, 1) == (False, [])  # one text, one at a time: a failed attempt
    s2 = sizer(clock, min_batch=4, initial_batch=4, max_concurrency=1)
    assert time_out(s2, clock, 4) == (False, [])
    assert time_out(s2, clock, 3)[0] is False  # a call's remainder below the floor is not free either


def test_a_slow_reply_shrinks_to_what_fits_but_by_at_most_half() -> None:
    clock = FakeClock()
    s = sizer(clock, initial_batch=20, max_concurrency=2)
    # 20 texts in 16 s (> 15 s): 15 s fits 18 of them.
    assert reply(s, clock, 20, 16.0) == [
        "batch size 20 -> 18 after a slow reply (16.0 s for 20 texts, 0.80 s/text)",
        "concurrency 2 -> 1 after a slow reply (16.0 s for 20 texts, 0.80 s/text)"]
    # 18 texts in 28 s would fit 9: exactly half, the most one reply may take away.
    assert reply(s, clock, 18, 28.0)[0].startswith("batch size 18 -> 9 after a slow reply")
    assert reply(s, clock, 9, 29.0)[0].startswith("batch size 9 -> 4 after")  # 4 fit, 4 = 9 // 2


def test_fast_replies_grow_the_batch_by_one_then_the_concurrency() -> None:
    clock = FakeClock()
    s = sizer(clock, max_batch=6, initial_batch=6, max_concurrency=3)
    time_out(s, clock, 6)
    assert (s.batch, s.concurrency, s.slow_start) == (3, 1, False)
    assert reply(s, clock, 3, 0.3) == ["batch size 3 -> 4 (replies fast, 0.10 s/text)"]  # additive
    assert reply(s, clock, 2, 0.2) == ["concurrency 1 -> 2 (replies fast, 0.10 s/text)"]  # had no more texts
    reply(s, clock, 4, 0.4)
    reply(s, clock, 5, 0.5)
    assert (s.batch, s.concurrency) == (6, 2)
    assert reply(s, clock, 6, 0.6) == ["concurrency 2 -> 3 (replies fast, 0.10 s/text)"]  # batch at max
    assert reply(s, clock, 6, 0.6) == []  # both at their maximum


def test_replies_between_fast_and_slow_hold_and_stale_ones_count_for_nothing() -> None:
    clock = FakeClock()
    s = sizer(clock, initial_batch=10, max_concurrency=1)
    s.slow_start = False
    # 1.2 s/text: 10 texts take 12 s (not over 15 s), 11 would take 13.2 s (over 11.25 s)
    assert reply(s, clock, 10, 12.0) == []
    assert s.batch == 10
    early = s.send(10)  # sent before a decrease ...
    time_out(s, clock, 10)
    clock.sleep(0.1)
    assert s.replied(early) == [] and s.batch == 5  # ... its fast reply grows nothing


def test_latency_and_throughput_for_status() -> None:
    clock = FakeClock()
    s = sizer(clock, initial_batch=10)
    assert s.status() == {"batch_size": 10, "concurrency": 4, "seconds_per_text": None,
                          "texts_per_second": 0.0}
    reply(s, clock, 10, 5.0)  # 0.5 s/text
    reply(s, clock, 10, 15.0)  # 1.5 s/text: smoothed 0.5 + 0.3 x 1.0
    status = s.status()
    assert status["seconds_per_text"] == pytest.approx(0.8)
    assert status["texts_per_second"] == pytest.approx(20 / 20.0)
    clock.sleep(100.0)  # nothing for a while: the last minute saw nothing done
    assert s.status()["texts_per_second"] == 0.0


def test_the_maximum_wins_over_a_larger_initial_or_minimum() -> None:
    s = sizer(FakeClock(), min_batch=8, initial_batch=16, max_batch=4)
    assert (s.min_batch, s.batch, s.max_batch) == (4, 4, 4)
    assert FAST_SHARE < 1  # growth needs room to spare, or sizes would flap around T


@pytest.mark.parametrize("kwargs", [{"min_batch": 0}, {"max_batch": 0}, {"initial_batch": 1.5},
                                    {"max_concurrency": True}, {"target_fraction": 0},
                                    {"target_fraction": 1.5}])
def test_bad_options_are_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        sizer(FakeClock(), **kwargs)


def test_gate_limit_can_shrink_and_grow_while_held() -> None:
    gate = Gate(2)
    assert gate.acquire(0) and gate.acquire(0)
    gate.set_limit(1)
    gate.release()
    assert not gate.acquire(0)  # one held, limit one: full
    took = threading.Event()
    waiter = threading.Thread(target=lambda: gate.acquire(30.0) and took.set())
    waiter.start()
    gate.set_limit(2)  # growing lets the waiter in at once
    waiter.join(30.0)
    assert took.is_set() and gate.limit == 2
    assert not gate.acquire(0.01)


def test_timeouts_in_a_row_pause_longer_and_a_reply_resets_them() -> None:
    """While the server still computes abandoned requests, a new one would only queue and
    time out too: pause the timeout, doubled with each timeout in a row, capped."""
    clock = FakeClock()
    s = sizer(clock, initial_batch=64, max_pause=100.0)
    pauses = []
    for n in (64, 32, 16, 8):
        ticket = s.send(n)
        clock.sleep(30.0)
        pauses.append(s.timed_out(ticket).pause)
    assert pauses == [30.0, 60.0, 100.0, 100.0]
    reply(s, clock, 4, 2.0)
    ticket = s.send(4)
    clock.sleep(30.0)
    assert s.timed_out(ticket).pause == 30.0


def test_gate_serves_waiters_in_arrival_order() -> None:
    gate = Gate(1)
    assert gate.acquire(0)
    order: list[int] = []
    threads = []
    for i in range(3):
        t = threading.Thread(target=lambda i=i: gate.acquire(30.0) and (order.append(i), gate.release()))
        t.start()
        threads.append(t)
        wait_until(lambda: len(gate._queue) == i + 1, timeout=30, what=f"waiter {i} queued")
    gate.release()
    for t in threads:
        t.join(30.0)
    assert order == [0, 1, 2]
