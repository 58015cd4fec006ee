"""A query whose lexical leg found nothing is answered without fusing (hybrid._dense_hits):
the same hits, ranks and scores as fusion.fuse makes of the dense leg alone, in every mode
and fusion, ties and dropped hits included (issue 21)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from roxi_mp import hybrid
from roxi_mp.fusion import DENSE, HYBRID, RRF, WEIGHTED, fuse
from roxi_mp.store_hits import Hit


def options(mode: str, fusion: str, dense_weight: float) -> hybrid.Options:
    return hybrid.Options(mode=mode, fusion=fusion, dense_weight=dense_weight, lexical_weight=0.3, rrf_k=60.0,
                          candidates=100, words=(), budget=2000)


class NoWords:
    """A store whose lexical leg found nothing: no chunk is looked up by id."""

    def chunk_hits(self, chunk_ids, *, with_text):
        assert not chunk_ids
        return {}


def lookup_of(rows: list[int], gone: set[int]):
    def lookup(asked, with_text):
        return {r: Hit(r, r + 1000, 7, "key", 2, 0, "title", "source", f"text {r}" if with_text else "", None, None)
                for r in asked if r not in gone}
    return lookup


def by_fusion(scores: np.ndarray, rows: np.ndarray, k: int, opts: hybrid.Options, lookup, with_text: bool):
    """What hybrid.search answered before it had a way around fusion."""
    dense = [(int(r), float(s)) for r, s in zip(rows, scores)]
    if opts.mode == HYBRID:
        best = fuse(dense, [], k=k, method=opts.fusion, rrf_k=opts.rrf_k, dense_weight=opts.dense_weight,
                    lexical_weight=opts.lexical_weight)
    else:
        best = fuse(dense[:k], [], k=k, method="rrf")
        for c in best:
            c.score = c.dense_score
    return hybrid._hits(NoWords(), best, with_text=with_text, lookup=lookup)


@pytest.mark.parametrize("mode,fusion", [(DENSE, WEIGHTED), (HYBRID, WEIGHTED), (HYBRID, RRF)])
def test_dense_hits_equal_the_fused_answer(mode: str, fusion: str) -> None:
    rng = random.Random(5)
    for trial in range(200):
        depth = rng.choice([1, 2, 10, 100])
        k = rng.choice([1, 3, 10, 20])
        values = [round(rng.uniform(-1, 1), rng.choice([1, 6])) for _ in range(depth)]  # ties now and then
        if trial % 17 == 0:
            values = [0.5] * depth  # all equal: min-max cannot order them
        scores = np.array(sorted(values, reverse=True), dtype=np.float32)
        rows = np.array(rng.sample(range(10_000), depth), dtype=np.int64)
        gone = set(rng.sample(rows.tolist(), rng.choice([0, 0, 1, 3]) if depth > 3 else 0))
        lookup = lookup_of(rows.tolist(), gone)
        opts = options(mode, fusion, rng.choice([1.0, 0.6, 0.25]))
        with_text = trial % 2 == 0
        expected = by_fusion(scores, rows, k, opts, lookup, with_text)
        search_depth = max(k, depth) if mode == HYBRID else min(k, depth)
        got = hybrid._dense_hits(None, scores[:k].tolist(), rows[:k].tolist(),
                                 hybrid.dense_scorer(scores[:search_depth], opts), with_text=with_text, lookup=lookup)
        assert got == expected, (trial, mode, fusion)


def test_no_dense_rows_no_hits() -> None:
    empty = np.zeros(0, dtype=np.float32)
    for mode, fusion in [(DENSE, RRF), (HYBRID, WEIGHTED), (HYBRID, RRF)]:
        scorer = hybrid.dense_scorer(empty, options(mode, fusion, 1.0))
        assert hybrid._dense_hits(None, [], [], scorer, with_text=True, lookup=lookup_of([], set())) == ([], 0)
