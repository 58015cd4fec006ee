"""Where a text query's time goes (roxi_mp.steps): the recorder with an injected clock, and
the query server's `stats` after real text queries over its ROUTER socket."""

from __future__ import annotations

import pytest

from roxi_mp.steps import STEPS, StepTimes

from .test_roles import QS, cfg_factory, qs_factory, zctx  # noqa: F401 (fixtures)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def query(steps: StepTimes, clock: Clock, mode: str | None, durations: dict[str, float]) -> None:
    steps.start()
    steps.mode = mode
    for step, seconds in durations.items():
        clock.now += seconds
        steps.mark(step)
    steps.finish()


def test_each_step_is_the_time_since_the_one_before_by_mode() -> None:
    clock = Clock()
    steps = StepTimes(clock=clock)
    for extra in (0.0, 0.001, 0.002):  # medians: the middle query's
        query(steps, clock, "dense", {"prepare": 0.0001 + extra, "model": 0.004, "scan": 0.0003,
                                      "hits": 0.0002, "reply": 0.0001})
    query(steps, clock, "hybrid", {"prepare": 0.0002, "lexical": 0.003, "model": 0.001, "scan": 0.0003,
                                   "hits": 0.0004, "reply": 0.0001})
    out = steps.p50_ms()
    assert out["dense"] == {"prepare": 1.1, "model": 4.0, "scan": 0.3, "hits": 0.2, "reply": 0.1, "queries": 3}
    assert list(out["hybrid"]) == list(STEPS) + ["queries"]
    assert out["hybrid"]["lexical"] == 3.0


def test_only_text_queries_answered_in_full_count() -> None:
    clock = Clock()
    steps = StepTimes(clock=clock)
    query(steps, clock, None, {"model": 0.001, "scan": 0.001, "hits": 0.001, "reply": 0.001})  # a vector query
    query(steps, clock, "dense", {"prepare": 0.001, "reply": 0.001})  # from the cache: no search
    query(steps, clock, "dense", {"prepare": 0.001, "model": 0.001})  # parked, or failed: never replied
    steps.start()  # and the next request forgets it
    assert steps.p50_ms() == {}


def test_it_keeps_the_last_samples_and_forgets_them_in_a_clear() -> None:
    clock = Clock()
    steps = StepTimes(samples=4, clock=clock)
    for ms in (50, 50, 50, 50, 1, 2, 3, 4):
        query(steps, clock, "lexical", {"prepare": 0.0, "lexical": ms / 1000, "hits": 0.0, "reply": 0.0})
    assert steps.p50_ms()["lexical"]["lexical"] == 3.0
    assert steps.p50_ms()["lexical"]["queries"] == 4
    steps.clear()
    assert steps.p50_ms() == {}


def steps_of(q: QS) -> dict:
    return q.ask("stats")["text_steps_ms"]


@pytest.mark.parametrize("mode", ["dense", "hybrid", "lexical"])
def test_the_query_server_reports_its_text_queries_steps(qs_factory, mode: str) -> None:  # noqa: F811
    q = qs_factory(query__cache_entries=0)
    for _ in range(3):
        assert q.ask("query", text="urate crystals in the big toe", k=2, mode=mode)["ok"]
    out = steps_of(q)
    assert list(out) == [mode]
    want = {"dense": ["prepare", "model", "scan"], "hybrid": ["prepare", "lexical", "model", "scan"],
            "lexical": ["prepare", "lexical"]}[mode] + ["hits", "reply", "queries"]
    assert list(out[mode]) == want
    assert out[mode]["queries"] == 3
    assert all(ms >= 0 for ms in out[mode].values())


def test_vector_queries_cached_answers_and_errors_are_not_counted_and_sleep_forgets(qs_factory) -> None:  # noqa: F811
    from .test_query_fast import ask, vector

    q = qs_factory(query__cache_entries=10)
    assert q.ask("query", text="urate crystals in the big toe", k=2, mode="dense")["ok"]
    assert q.ask("query", text="urate crystals in the big toe", k=2, mode="dense")["ok"]  # cached
    assert ask(q, vector("gout"), k=2)["ok"]  # a vector: fast path
    assert ask(q, vector("gout"), k=2, mode="dense")["ok"]  # a vector: general path
    assert not q.ask("query", text="gout", k=10_000)["ok"]
    assert steps_of(q)["dense"]["queries"] == 1
    assert q.ask("sleep")["ok"]
    assert steps_of(q) == {}
