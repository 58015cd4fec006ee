"""One query answered by the dense leg, the lexical leg, or both fused (the query server's search).

A request picks its `mode` (hybrid, dense, lexical), its `fusion` and the legs' `weights`
(defaults in [query]); `options` checks them. `search` runs the legs inside the read
snapshot the query server holds (so both see the same documents as the hit lookup):

- the lexical leg first (SQLite FTS5 bm25 over every stored chunk of a live version,
  roxi_mp.store_hits.lexical), so that a text query's embedding, computing meanwhile in
  the query model process, costs the lexical leg nothing: `vector()` is only then awaited;
- the dense leg over the mapped rows (the Searcher hides the rows of versions not live);
- fusion (roxi_mp.fusion) of each leg's best `max(k, query.candidates)`; a single leg's
  answer is its own best k;
- the hit lookup of the final k only: by row for embedded chunks, by chunk id for chunks
  found by their words alone. Each hit says which leg found it at which rank and whether
  it is embedded.

When the lexical leg found nothing (a vector alone has no words) the answer is the dense
leg's first k in its own order, with the scores fusion would give them (`_dense_hits`),
without making and sorting a candidate for each of the `query.candidates` rows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from . import lexical
from .errors import BadInput
from .fusion import DENSE, HYBRID, LEXICAL, METHODS, MODES, RRF, Candidate, fuse

if TYPE_CHECKING:
    from .store_hits import Hit

if TYPE_CHECKING:
    from .config import Config
    from .search import Searcher
    from .store import Store


@dataclass(frozen=True)
class Options:
    """How one query is answered."""

    mode: str
    fusion: str
    dense_weight: float
    lexical_weight: float
    rrf_k: float
    candidates: int
    words: tuple[str, ...]  # what the lexical leg searches (lexical.terms); none: an empty leg
    budget: int  # chunks the lexical leg scores, about (lexical.split_by_frequency)

    @functools.cached_property
    def key(self) -> tuple:
        """What a cached answer depends on, besides the query itself."""
        return (self.mode, self.fusion, self.dense_weight, self.lexical_weight, self.rrf_k, self.candidates)


#: the request fields `options` reads
OPTION_FIELDS = ("mode", "fusion", "weights")


def options(msg: dict, cfg: Config, *, text: str | None, has_vector: bool) -> Options:
    """The request's mode, fusion and weights over the configured ones; BadInput for any
    value out of place (one line naming the field)."""
    q = cfg.query
    mode = msg.get("mode", q.mode)
    if not isinstance(mode, str) or mode not in MODES:
        raise BadInput(f"mode must be one of {', '.join(MODES)}, got {_show(mode)}")
    method = msg.get("fusion", q.fusion)
    if not isinstance(method, str) or method not in METHODS:
        raise BadInput(f"fusion must be one of {', '.join(METHODS)}, got {_show(method)}")
    dense_w, lexical_w = _weights(msg.get("weights"), q.dense_weight, q.lexical_weight)
    if mode == LEXICAL and text is None:
        raise BadInput("a lexical query needs 'text' (a vector alone has no words)")
    if mode == DENSE and text is None and not has_vector:
        raise BadInput("query needs 'text' or a vector frame")
    # Only the lexical leg reads the words: a dense query does not cut them (~0.03 ms).
    words = tuple(lexical.terms(text, max_terms=q.max_lexical_terms)) if text is not None and mode != DENSE else ()
    return Options(mode=mode, fusion=method, dense_weight=dense_w, lexical_weight=lexical_w,
                   rrf_k=float(q.rrf_k), candidates=q.candidates, words=words,
                   budget=q.lexical_budget)


def _weights(value: Any, dense: float, lexical_: float) -> tuple[float, float]:
    if value is None:
        return dense, lexical_
    if not isinstance(value, dict) or not set(value) <= {"dense", "lexical"}:
        raise BadInput("weights must be a map with 'dense' and/or 'lexical'")
    out = []
    for name, default in (("dense", dense), ("lexical", lexical_)):
        w = value.get(name, default)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
            raise BadInput(f"weights.{name} must be a number in [0, 1], got {_show(w)}")
        out.append(float(w))
    if out[0] + out[1] <= 0:
        raise BadInput("weights.dense and weights.lexical cannot both be 0")
    return out[0], out[1]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def search(searcher: Searcher | None, store: Store, opts: Options, k: int, *, with_text: bool,
           vector: Callable[[], np.ndarray | None],
           lookup: Callable[[Sequence[int], bool], dict[int, Hit]] | None = None,
           mark: Callable[[str], None] | None = None) -> tuple[list[dict], int]:
    """The query's hit maps, best first, and how many dense hits the lookup dropped as not
    live (a last line of defence: the hidden rows make it 0). Call inside one read snapshot
    of `store` that the searcher's mapping and hidden rows were synced to. `vector()` gives
    the query vector (awaiting its embedding), called only if the dense leg runs;
    `lookup(rows, with_text)` finds the hits of rows (default `store.hits`); `mark(step)`
    is told each step's end (roxi_mp.steps: lexical, model, scan, hits)."""
    mark = mark or _no_mark
    depth = max(k, opts.candidates) if opts.mode == HYBRID else k
    words = []
    if opts.mode != DENSE and opts.words:
        words = store.lexical(opts.words, depth, budget=opts.budget)
        mark("lexical")
    scores = rows = np.zeros(0)
    if opts.mode != LEXICAL:
        v = vector()
        mark("model")
        if v is not None and searcher is not None and searcher.ntotal:
            scores, rows = searcher.search(v, depth)
            mark("scan")
    if not words:
        out = _dense_hits(store, scores[:k].tolist(), rows[:k].tolist(), dense_scorer(scores, opts),
                          with_text=with_text, lookup=lookup)
        mark("hits")
        return out
    dense = list(zip(rows.tolist(), scores.tolist()))  # ints and floats: tolist makes them
    if opts.mode == HYBRID:
        best = fuse(dense, words, k=k, method=opts.fusion, rrf_k=opts.rrf_k,
                    dense_weight=opts.dense_weight, lexical_weight=opts.lexical_weight)
    else:
        best = fuse(dense[:k], words[:k], k=k, method="rrf")
        for c in best:  # one leg: its own order and scores
            c.score = c.dense_score if c.dense_rank else c.lexical_score
    out = _hits(store, best, with_text=with_text, lookup=lookup)
    mark("hits")
    return out


def _no_mark(step: str) -> None:
    """The default `mark`: nobody is timing this search."""


def dense_scorer(scores: np.ndarray, opts: Options) -> Callable[[int, float], float]:
    """score(rank, dense score) as `fuse` scores the dense leg's best first `scores` when
    the lexical leg found nothing (a single leg: the dense score itself)."""
    if opts.mode != HYBRID:
        return lambda rank, s: s
    weight = opts.dense_weight
    if opts.fusion == RRF:
        rrf_k = opts.rrf_k
        return lambda rank, s: weight / (rrf_k + rank) + 0.0
    # fusion._range over every candidate: best first, so the last is the lowest
    low, high = (float(scores[-1]), float(scores[0])) if scores.size else (0.0, 1.0)
    low, span = (low, high - low) if high > low else (low - 1.0, 1.0)
    return lambda rank, s: weight * (s - low) / span + 0.0


def _dense_hits(store: Store, scores: list[float], rows: list[int], score: Callable[[int, float], float], *,
                with_text: bool, lookup: Callable[[Sequence[int], bool], dict[int, Hit]] | None
                ) -> tuple[list[dict], int]:
    """`_hits` of the dense leg's best first (scores, rows) alone: what `fuse` makes of
    them with no lexical candidate is their own order, without a candidate for each."""
    by_row = store.hits(rows, with_text=with_text) if lookup is None else lookup(rows, with_text)
    hits: list[dict] = []
    for rank, (row, s) in enumerate(zip(rows, scores), 1):
        hit = by_row.get(row)
        if hit is not None:
            hits.append(_item(hit, len(hits) + 1, score(rank, s), rank, None, with_text))
    return hits, len(rows) - len(hits)


def _hits(store: Store, best: list[Candidate], *, with_text: bool,
          lookup: Callable[[Sequence[int], bool], dict[int, Hit]] | None = None) -> tuple[list[dict], int]:
    rows = [c.row for c in best if c.row is not None]
    by_row = store.hits(rows, with_text=with_text) if lookup is None else lookup(rows, with_text)
    by_chunk = store.chunk_hits([c.chunk_id for c in best if c.row is None], with_text=with_text)
    hits, dropped = [], 0
    for c in best:
        hit = by_row.get(c.row) if c.row is not None else by_chunk.get(c.chunk_id)
        if hit is None:
            dropped += 1  # not live (or gone): never served, never invented
            continue
        hits.append(_item(hit, len(hits) + 1, c.score, c.dense_rank, c.lexical_rank, with_text))
    return hits, dropped


def _item(hit: Hit, rank: int, score: float, dense_rank: int | None, lexical_rank: int | None,
          with_text: bool) -> dict:
    """One hit of a reply. (QueryServer._fast_hits builds the same map for a vector alone:
    change both; tests/unit/test_query_fast.py compares them byte for byte.)"""
    item = {"rank": rank, "score": score, "row": hit.row, "chunk_id": hit.chunk_id,
            "doc_id": hit.doc_id, "key": hit.key, "version": hit.version, "position": hit.position,
            "title": hit.title, "source": hit.source, "page": hit.page, "heading": hit.heading,
            "dense_rank": dense_rank, "lexical_rank": lexical_rank, "embedded": hit.row is not None}
    if with_text:
        item["text"] = hit.text
    return item
