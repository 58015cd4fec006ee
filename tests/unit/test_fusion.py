"""Unit tests of roxi_mp.fusion: reciprocal-rank and weighted fusion by hand-computed
examples, ties, one candidate per chunk, chunks without rows, leg weights of 0."""

from __future__ import annotations

import pytest

from roxi_mp.fusion import METHODS, RRF, WEIGHTED, fuse, key_of

# dense: (row, inner product) best first; lexical: (chunk id, row or None, bm25) best first
DENSE = [(10, 0.9), (11, 0.8), (12, 0.5)]
LEXICAL = [(111, 11, 6.0), (500, None, 4.0), (112, 12, 2.0)]  # chunk 111 has row 11, 500 none


def order(found) -> list[tuple[int | None, int | None]]:
    return [(c.row, c.chunk_id) for c in found]


def test_rrf_by_hand() -> None:
    found = fuse(DENSE, LEXICAL, k=10, method=RRF, rrf_k=60)
    scores = {(c.row, c.chunk_id): c.score for c in found}
    assert scores == pytest.approx({
        (11, 111): 1 / 62 + 1 / 61,
        (12, 112): 1 / 63 + 1 / 63,
        (10, None): 1 / 61,
        (None, 500): 1 / 62,
    })
    assert order(found) == [(11, 111), (12, 112), (10, None), (None, 500)]


def test_rrf_constant_and_weights() -> None:
    found = fuse(DENSE, LEXICAL, k=10, method=RRF, rrf_k=1, dense_weight=0.5, lexical_weight=1.0)
    scores = {(c.row, c.chunk_id): c.score for c in found}
    assert scores == pytest.approx({
        (11, 111): 0.5 / 3 + 1 / 2,
        (12, 112): 0.5 / 4 + 1 / 4,
        (10, None): 0.5 / 2,
        (None, 500): 1 / 3,
    })
    assert order(found) == [(11, 111), (12, 112), (None, 500), (10, None)]


def test_weighted_by_hand() -> None:
    # dense min-max over 0.5..0.9: 10 -> 1, 11 -> 0.75, 12 -> 0; lexical over 2..6: 1, 0.5, 0
    found = fuse(DENSE, LEXICAL, k=10, method=WEIGHTED, dense_weight=1.0, lexical_weight=0.5)
    scores = {(c.row, c.chunk_id): c.score for c in found}
    assert scores == pytest.approx({
        (11, 111): 0.75 + 0.5 * 1.0,
        (10, None): 1.0,
        (None, 500): 0.5 * 0.5,
        (12, 112): 0.0,
    })
    assert order(found) == [(11, 111), (10, None), (None, 500), (12, 112)]


def test_a_chunk_found_by_both_legs_is_one_candidate_with_both_ranks() -> None:
    found = fuse(DENSE, LEXICAL, k=10)
    assert len(found) == 4
    both = next(c for c in found if c.row == 11)
    assert (both.chunk_id, both.dense_rank, both.lexical_rank) == (111, 2, 1)
    assert (both.dense_score, both.lexical_score) == (0.8, 6.0)
    dense_only = next(c for c in found if c.row == 10)
    assert (dense_only.chunk_id, dense_only.dense_rank, dense_only.lexical_rank) == (None, 1, None)
    words_only = next(c for c in found if c.chunk_id == 500)
    assert (words_only.row, words_only.dense_rank, words_only.lexical_rank) == (None, None, 2)


def test_a_chunk_without_a_row_is_keyed_apart_from_rows() -> None:
    """Chunk id 5 without a row is not row 5 of the dense leg (nor row 0 for chunk id 0...)."""
    assert key_of(5, None) == 5 and key_of(None, 5) == -6 and key_of(None, 0) == -1 and key_of(0, 7) == 0
    found = fuse([(5, 0.9), (0, 0.8)], [(5, None, 3.0), (0, None, 2.0)], k=10)
    assert sorted(order(found), key=str) == sorted([(5, None), (0, None), (None, 5), (None, 0)], key=str)
    assert all((c.dense_rank is None) != (c.lexical_rank is None) for c in found)


@pytest.mark.parametrize("method", [RRF, WEIGHTED])
def test_ties_keep_the_dense_order_then_the_lexical_order(method: str) -> None:
    # Two dense-only and two lexical-only candidates at equal ranks: equal fused scores.
    dense = [(1, 0.9), (2, 0.9)]
    lexical = [(30, None, 5.0), (40, None, 5.0)]
    found = fuse(dense, lexical, k=10, method=method)
    assert len({round(c.score, 12) for c in found}) <= 2
    ranked = order(found)
    assert ranked.index((1, None)) < ranked.index((2, None))
    assert ranked.index((None, 30)) < ranked.index((None, 40))
    # a dense candidate and a lexical one at the same score: the dense one first
    assert order(fuse([(1, 0.9)], [(30, None, 5.0)], k=10, method=method)) == [(1, None), (None, 30)]


@pytest.mark.parametrize("method", [RRF, WEIGHTED])
def test_a_weight_of_zero_silences_its_leg(method: str) -> None:
    """Each candidate scores what the other leg alone gives it (0 if that leg did not find it)."""
    def scores(found) -> dict:
        return {key_of(c.row, c.chunk_id): c.score for c in found}

    lexical_alone, dense_alone = scores(fuse([], LEXICAL, k=10, method=method)), scores(fuse(DENSE, [], k=10, method=method))
    found = fuse(DENSE, LEXICAL, k=10, method=method, dense_weight=0.0)
    assert scores(found) == pytest.approx({**dict.fromkeys(dense_alone, 0.0), **lexical_alone})
    assert order(found)[0] == (11, 111)
    found = fuse(DENSE, LEXICAL, k=10, method=method, lexical_weight=0.0)
    assert scores(found) == pytest.approx({**dict.fromkeys(lexical_alone, 0.0), **dense_alone})
    assert order(found)[0] == (10, None)


def test_the_best_k_and_empty_legs() -> None:
    assert order(fuse(DENSE, LEXICAL, k=2)) == [(11, 111), (12, 112)]
    assert fuse([], [], k=5) == []
    for method in (RRF, WEIGHTED):
        assert order(fuse(DENSE, [], k=5, method=method)) == [(10, None), (11, None), (12, None)]
        assert order(fuse([], LEXICAL, k=5, method=method)) == [(11, 111), (None, 500), (12, 112)]


def test_weighted_equal_scores_and_a_lone_candidate_count_as_found() -> None:
    """Min-max of equal scores cannot order them: each maps to 1, not 0 or a division by 0."""
    found = fuse([(1, 0.3), (2, 0.3)], [(9, None, 7.0)], k=10, method=WEIGHTED, dense_weight=1.0,
                 lexical_weight=0.5)
    assert {(c.row, c.chunk_id): c.score for c in found} == pytest.approx(
        {(1, None): 1.0, (2, None): 1.0, (None, 9): 0.5})


def test_an_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fusion method"):
        fuse(DENSE, LEXICAL, k=3, method="borda")


def reference_fuse(dense, lexical, *, k, method, rrf_k=60.0, dense_weight=1.0, lexical_weight=1.0):
    """fuse as first written: a Candidate for every chunk found, scored, all sorted."""
    from roxi_mp.fusion import Candidate, _range, key_of

    found = {}
    for rank, (row, score) in enumerate(dense, 1):
        found[row] = Candidate(row=row, chunk_id=None, dense_rank=rank, dense_score=score)
    for rank, (chunk_id, row, score) in enumerate(lexical, 1):
        c = found.get(key := key_of(row, chunk_id))
        if c is None:
            c = found[key] = Candidate(row=row, chunk_id=chunk_id)
        c.chunk_id, c.lexical_rank, c.lexical_score = chunk_id, rank, score
    d_low, d_span = _range(s for _, s in dense)
    l_low, l_span = _range(s for _, _, s in lexical)
    for c in found.values():
        if method == RRF:
            c.score = ((dense_weight / (rrf_k + c.dense_rank) if c.dense_rank else 0.0)
                       + (lexical_weight / (rrf_k + c.lexical_rank) if c.lexical_rank else 0.0))
        else:
            c.score = ((dense_weight * (c.dense_score - d_low) / d_span if c.dense_rank else 0.0)
                       + (lexical_weight * (c.lexical_score - l_low) / l_span if c.lexical_rank else 0.0))
    return sorted(found.values(), key=lambda c: (-c.score, c.dense_rank or 1 << 30, c.lexical_rank or 1 << 30))[:k]


@pytest.mark.parametrize("method", METHODS)
def test_fuse_picks_exactly_what_scoring_every_candidate_would(method: str) -> None:
    """fuse builds Candidates for the best k only; the same candidates, fields and scores
    (to the bit) as a Candidate for every chunk, on random legs with shared chunks, chunks
    without rows, tied scores, empty legs and zero weights."""
    import random

    rng = random.Random(7)
    for case in range(400):
        rows = rng.sample(range(500), rng.randrange(0, 60))
        scores = sorted((rng.choice([0.5, 0.25, rng.random()]) for _ in rows), reverse=True)
        dense = list(zip(rows, scores))
        lexical, chunk_ids = [], rng.sample(range(10_000, 20_000), rng.randrange(0, 60))
        bm25 = sorted((rng.choice([7.0, rng.uniform(0, 30)]) for _ in chunk_ids), reverse=True)
        for chunk_id, score in zip(chunk_ids, bm25):
            row = rng.choice([None, rng.choice(rows) if rows else None, rng.randrange(500, 600)])
            lexical.append((chunk_id, row, score))
        if len({key_of(r, c) for c, r, _ in lexical}) < len(lexical):
            continue  # a chunk appears once in a leg (its row is its own)
        weights = rng.choice([(1.0, 1.0), (0.0, 1.0), (1.0, 0.0), (0.3, 0.9)])
        k = rng.choice([1, 5, 10, 200])
        got = fuse(dense, lexical, k=k, method=method, dense_weight=weights[0], lexical_weight=weights[1])
        want = reference_fuse(dense, lexical, k=k, method=method, dense_weight=weights[0], lexical_weight=weights[1])
        assert got == want, case
