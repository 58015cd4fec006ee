"""Two ranked lists of chunks made into one: reciprocal-rank fusion or weighted scores.

The dense leg ranks vector rows by inner product; the lexical leg ranks chunks by bm25,
including chunks not embedded yet (no row). A chunk is the same candidate in both legs
when the lexical leg found it with the row the dense leg names; a chunk without a row can
only come from the lexical leg, so it is keyed by its chunk id (`key_of`).

- `rrf` (Cormack et al. 2009): score = w_dense / (rrf_k + dense rank) + w_lexical /
  (rrf_k + lexical rank), ranks from 1, a leg that did not find the chunk adds nothing.
  It needs no calibration between bm25 and cosine scores, which live on unrelated scales.
- `weighted`: each leg's scores min-max normalised over its own candidates to [0, 1],
  score = w_dense * dense + w_lexical * lexical (a leg that did not find it adds 0).

Which is the default, and with which constants, was measured on SciFact (tests/bench/
bench_beir.py; the README's performance section has the figures).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

#: which legs answer a query
HYBRID, DENSE, LEXICAL = "hybrid", "dense", "lexical"
MODES = (HYBRID, DENSE, LEXICAL)
#: how hybrid fuses them
RRF, WEIGHTED = "rrf", "weighted"
METHODS = (RRF, WEIGHTED)


@dataclass
class Candidate:
    """One chunk as the legs found it, and its fused score."""

    row: int | None  # vector row; None when not embedded
    chunk_id: int | None  # known when the lexical leg found it
    dense_rank: int | None = None
    dense_score: float | None = None
    lexical_rank: int | None = None
    lexical_score: float | None = None
    score: float = 0.0


def key_of(row: int | None, chunk_id: int | None) -> int:
    """One candidate per chunk: rows are >= 0, a chunk without a row is -(id + 1)."""
    if row is not None:
        return row
    assert chunk_id is not None
    return -chunk_id - 1


def fuse(dense: Sequence[tuple[int, float]], lexical: Sequence[tuple[int, int | None, float]], *,
         k: int, method: str = RRF, rrf_k: float = 60.0, dense_weight: float = 1.0,
         lexical_weight: float = 1.0) -> list[Candidate]:
    """The best `k` candidates of both legs, best first. `dense` is [(row, score)] best
    first; `lexical` is [(chunk id, row or None, score)] best first."""
    # Plain tuples until the best k are known: a Candidate for each of the ~200 chunks the
    # legs find cost a hybrid query ~0.1 ms (issue 21). Ranks keyed as Candidates are.
    if method not in METHODS:
        raise ValueError(f"unknown fusion method {method!r} (known: {', '.join(METHODS)})")
    dense_at = {row: (rank, score) for rank, (row, score) in enumerate(dense, 1)}
    lexical_at = {key_of(row, chunk_id): (rank, chunk_id, row, score)
                  for rank, (chunk_id, row, score) in enumerate(lexical, 1)}
    if method == RRF:
        def fused(d: tuple | None, x: tuple | None) -> float:
            return ((dense_weight / (rrf_k + d[0]) if d else 0.0)
                    + (lexical_weight / (rrf_k + x[0]) if x else 0.0))
    else:
        d_low, d_span = _range(s for _, s in dense)
        l_low, l_span = _range(s for _, _, s in lexical)

        def fused(d: tuple | None, x: tuple | None) -> float:
            return ((dense_weight * (d[1] - d_low) / d_span if d else 0.0)
                    + (lexical_weight * (x[3] - l_low) / l_span if x else 0.0))
    no_rank = 1 << 30
    ranked = []
    for key, d in dense_at.items():
        x = lexical_at.get(key)
        ranked.append((-fused(d, x), d[0], x[0] if x else no_rank, key))
    for key, x in lexical_at.items():
        if key not in dense_at:
            ranked.append((-fused(None, x), no_rank, x[0], key))
    # Ties (equal fused scores) keep the dense leg's order, then the lexical leg's: no two
    # candidates share both ranks, so the key is never reached.
    ranked.sort()
    best = []
    for minus_score, _, _, key in ranked[:k]:
        d, x = dense_at.get(key), lexical_at.get(key)
        best.append(Candidate(row=x[2] if x else key, chunk_id=x[1] if x else None,
                              dense_rank=d[0] if d else None, dense_score=d[1] if d else None,
                              lexical_rank=x[0] if x else None, lexical_score=x[3] if x else None,
                              score=-minus_score))
    return best


def _range(scores) -> tuple[float, float]:
    """(origin, span) mapping scores onto [0, 1]; when they are all equal (a lone candidate
    too) each maps to 1: the leg found them, and min-max cannot order them."""
    values = list(scores)
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    return (low, high - low) if high > low else (low - 1.0, 1.0)
