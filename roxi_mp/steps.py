"""Where a text query's time goes, step by step, for `stats` and the text-query benchmark.

The query server marks the moments of a text query answered on its loop (issue 21: a text
query should cost at most 1 ms over the model's own time, and the benchmark shows the
breakdown by step). Each mark ends a step:

- prepare: from the request taken off the socket to its text sent to the model (parsing,
  options, a look in the result cache; a lexical query: to its search, the commit mark and
  the cache included);
- lexical: the lexical leg (hybrid and lexical queries), while the model computes;
- model: from the end of the step before to the query's vector in hand: the commit mark,
  a snapshot after a commit and the result cache (all while the model computes), and the
  part of the model's time and round trip they and the lexical leg did not cover;
- scan: the dense leg's search;
- hits: fusion, the hit lookup and the hit maps;
- reply: the reply packed and handed to ZeroMQ.

`StepTimes` keeps the last `SAMPLES` durations of each step by mode, so `p50_ms()` is the
recent median whatever the process's age, in bounded memory (dropped in deep sleep). A
query answered from the cache, parked for a remote model, or failed is not counted (its
steps are not these), nor is a vector query.
"""

from __future__ import annotations

import collections
import time
from typing import Callable

#: durations kept per mode and step
SAMPLES = 256
#: the steps, in the order of a query
STEPS = ("prepare", "lexical", "model", "scan", "hits", "reply")


class StepTimes:
    def __init__(self, samples: int = SAMPLES, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self.samples = samples
        self.clock = clock
        self.times: dict[str, dict[str, collections.deque]] = {}
        self.marks: list[tuple[str, float]] = []
        self.mode: str | None = None  # set by whoever knows the query is a text one

    def start(self) -> None:
        """A request was taken off the socket: forget the last one's marks."""
        self.marks = [("", self.clock())]
        self.mode = None

    def mark(self, step: str) -> None:
        """`step` ended now."""
        self.marks.append((step, self.clock()))

    def finish(self) -> None:
        """The request was answered: keep its steps if it was a text query whose every
        step was marked (not from the cache, not parked, not failed halfway)."""
        marks, mode = self.marks, self.mode
        self.marks, self.mode = [], None
        if mode is None or not marks or marks[-1][0] != "reply" or "hits" not in (s for s, _ in marks):
            return
        by_step = self.times.setdefault(mode, {})
        for (_, before), (step, at) in zip(marks, marks[1:]):
            by_step.setdefault(step, collections.deque(maxlen=self.samples)).append(at - before)

    def clear(self) -> None:
        self.times.clear()

    def p50_ms(self) -> dict[str, dict[str, float]]:
        """{mode: {step: median ms of its last SAMPLES text queries}}, steps in query order."""
        out = {}
        for mode, by_step in self.times.items():
            out[mode] = {step: round(_median(by_step[step]) * 1000, 3) for step in STEPS if by_step.get(step)}
            out[mode]["queries"] = max(len(d) for d in by_step.values())
        return out


def _median(values: collections.deque) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]
