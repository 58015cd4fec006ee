"""Hidden rows are filtered inside the search (issue 17): k hits asked, k visible hits found.

Real vectors files and real faiss indexes in tmp_path; the reference is a numpy brute force
over the visible rows (of the same float16 values the file holds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from roxi_mp import ann_build
from roxi_mp.config import Config
from roxi_mp.search import Searcher
from roxi_mp.vectors import VectorWriter

DIM = 32
MODEL = "test/filter"


def unit_rows(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_cfg(tmp_path: Path, kind: str = "exact") -> Config:
    cfg = Config(data_dir=tmp_path)
    cfg.indexer.index = kind
    cfg.indexer.ann_min_rows = 1000
    return cfg


def append(cfg: Config, x: np.ndarray) -> None:
    with VectorWriter(cfg.vectors_path, dim=x.shape[1], model_id=MODEL) as w:
        w.append(x)
        w.sync()
        w.publish(w.rows)


def tombstones(rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random `fraction` of `rows` hidden: (bool mask, packed bitmap in faiss's bit order)."""
    mask = np.random.default_rng(seed).random(rows) < fraction
    return mask, np.packbits(mask, bitorder="little")


def reference_scored(x: np.ndarray, hidden: np.ndarray, queries: np.ndarray,
                     k: int) -> tuple[np.ndarray, np.ndarray]:
    """The true top k visible rows of each query (-1 padded), best first, and their scores."""
    scores = queries @ x.astype(np.float16).astype(np.float32).T
    scores[:, hidden[:len(x)]] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(scores, top, axis=1)
    return np.where(best > -np.inf, top, -1), best


def reference(x: np.ndarray, hidden: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return reference_scored(x, hidden, queries, k)[0]


def test_exact_top_k_equals_the_visible_reference(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    x = unit_rows(20_000, seed=1, dim=64)
    append(cfg, x)
    hidden, bitmap = tombstones(len(x), 0.3, seed=2)
    searcher = Searcher(cfg, rows=len(x))
    searcher.set_hidden(bitmap)
    assert searcher.info()["hidden_rows"] == hidden.sum()
    queries = unit_rows(50, seed=3, dim=64)
    truth, truth_scores = reference_scored(x, hidden, queries, 10)
    equal = 0
    for q, t, ts in zip(queries, truth, truth_scores):
        scores, rows = searcher.search(q[None, :], 10)
        assert not hidden[rows].any()
        # faiss sums in another order than numpy: rows whose products tie to 1e-6 may swap.
        np.testing.assert_allclose(scores, ts, atol=1e-5)
        equal += rows.tolist() == t.tolist()
    assert equal >= 48


def test_k_hits_when_k_rows_are_visible_and_all_visible_ones_when_fewer(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    x = unit_rows(200, seed=4)
    append(cfg, x)
    hidden = np.ones(len(x), dtype=bool)
    hidden[::20] = False  # 10 visible rows
    searcher = Searcher(cfg, rows=len(x))
    searcher.set_hidden(np.packbits(hidden, bitorder="little"))
    assert len(searcher.search(x[0][None, :], 5)[1]) == 5
    scores, rows = searcher.search(x[0][None, :], 50)
    assert sorted(rows.tolist()) == list(range(0, 200, 20))
    assert list(scores) == sorted(scores, reverse=True)
    searcher.set_hidden(None)  # nothing hidden again: every row answers
    assert len(searcher.search(x[0][None, :], 50)[1]) == 50


def test_rows_appended_after_the_bitmap_are_visible(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    x = unit_rows(1500, seed=5)
    append(cfg, x[:1000])
    searcher = Searcher(cfg, rows=1000)
    searcher.set_hidden(np.full(125, 0xFF, dtype=np.uint8))  # all 1000 rows hidden
    assert len(searcher.search(x[0][None, :], 10)[1]) == 0
    append(cfg, x[1000:])
    searcher.follow(1500)
    assert searcher.info()["hidden_rows"] == 1000
    for row in (1000, 1234, 1499):
        assert searcher.search(x[row][None, :], 1)[1][0] == row
    assert sorted(searcher.search(x[0][None, :], 1000)[1].tolist()) == list(range(1000, 1500))


def test_a_bitmap_longer_than_the_rows_hides_rows_once_they_are_mapped(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    x = unit_rows(1200, seed=6)
    append(cfg, x)
    hidden = np.zeros(1200, dtype=bool)
    hidden[1100:] = True
    searcher = Searcher(cfg, rows=1000)
    searcher.set_hidden(np.packbits(hidden, bitorder="little"))
    assert searcher.info()["hidden_rows"] == 0
    searcher.follow(1200)
    assert searcher.info()["hidden_rows"] == 100
    assert searcher.search(x[1150][None, :], 1)[1][0] != 1150


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_and_tail_never_return_a_hidden_row(tmp_path: Path, kind: str) -> None:
    cfg = make_cfg(tmp_path, kind)
    cfg.query.ivf_nprobe = 64  # small lists: most of them, to make recall a property of the code
    x = unit_rows(5000, seed=7)
    append(cfg, x[:4000])
    ann_build.build(cfg.vectors_path, cfg.ann_path, ann_build.BuildParams.from_config(cfg), rows=4000)
    append(cfg, x[4000:])
    hidden, bitmap = tombstones(len(x), 0.3, seed=8)
    searcher = Searcher(cfg, rows=len(x))
    assert (searcher.kind, searcher.ann_rows, searcher.tail.ntotal) == (kind, 4000, 1000)
    searcher.set_hidden(bitmap)
    assert searcher.info()["hidden_rows"] == hidden.sum()
    queries = unit_rows(50, seed=9)
    truth = reference(x, hidden, queries, 10)
    found = [searcher.search(q[None, :], 10)[1] for q in queries]
    assert all(len(f) == 10 and not hidden[f].any() for f in found)
    recall = np.mean([len(set(f.tolist()) & set(t.tolist())) / 10 for f, t in zip(found, truth)])
    assert recall >= 0.95
    # Visible rows on either side of the index's edge are their own best match.
    for row in np.flatnonzero(~hidden)[[0, 1, -2, -1]].tolist() + [int(np.flatnonzero(~hidden[4000:])[0]) + 4000]:
        assert searcher.search(x[row][None, :], 1)[1][0] == row
    # A k beyond what the index finds among visible rows: the exact fallback, filtered too.
    scores, rows = searcher.search(x[0][None, :], 3000)
    assert len(rows) == 3000 and len(set(rows.tolist())) == 3000 and not hidden[rows].any()


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_an_all_hidden_store_returns_no_hits(tmp_path: Path, kind: str) -> None:
    cfg = make_cfg(tmp_path, kind)
    x = unit_rows(1200, seed=10)
    append(cfg, x)
    if kind == "hnsw":
        ann_build.build(cfg.vectors_path, cfg.ann_path, ann_build.BuildParams.from_config(cfg), rows=1000)
    searcher = Searcher(cfg, rows=1200)
    assert searcher.kind == kind
    searcher.set_hidden(np.packbits(np.ones(1200, dtype=bool), bitorder="little"))
    scores, rows = searcher.search(x[3][None, :], 10)
    assert len(scores) == len(rows) == 0


class Recording:
    """Wraps a faiss index and records the `params` of each search."""

    def __init__(self, index: Any) -> None:
        self.index, self.params = index, []
        self.ntotal = index.ntotal

    def search(self, x: np.ndarray, k: int, *, params: Any = None) -> Any:
        self.params.append(params)
        return self.index.search(x, k, params=params)


def test_nothing_hidden_passes_no_selector(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    x = unit_rows(1000, seed=11)
    append(cfg, x)
    searcher = Searcher(cfg, rows=1000)
    plain = searcher.search(x[7][None, :], 10)
    searcher.tail = tail = Recording(searcher.tail)
    for bitmap in (None, np.zeros(125, dtype=np.uint8), np.zeros(0, dtype=np.uint8)):
        searcher.set_hidden(bitmap)
        assert searcher.hidden is None and "hidden_rows" not in searcher.info()
        got = searcher.search(x[7][None, :], 10)
        np.testing.assert_array_equal(got[1], plain[1])
        np.testing.assert_array_equal(got[0], plain[0])
    assert tail.params == [None, None, None]
    searcher.set_hidden(np.packbits(np.arange(1000) == 7, bitorder="little"))
    scores, rows = searcher.search(x[7][None, :], 10)
    # One row hidden: the best 11 asked with no selector, row 7 dropped from them.
    assert 7 not in rows and rows.tolist() == [r for r in plain[1].tolist() if r != 7] + [rows[-1]]
    assert len(rows) == 10 and tail.params[-1] is None


def test_hidden_rows_crowding_a_query_fall_back_to_the_selector(tmp_path: Path) -> None:
    # Each query's own nearest 1000 rows hidden: the best rows asked without a selector are
    # all hidden, so the scan is made again with it, and the answer is still exact.
    cfg = make_cfg(tmp_path)
    x = unit_rows(5000, seed=14)
    append(cfg, x)
    queries = x[[10, 20]]
    scores_all = queries @ x.astype(np.float16).astype(np.float32).T
    for q, own in zip(queries, scores_all):
        hidden = np.zeros(len(x), dtype=bool)
        hidden[np.argsort(-own)[:1000]] = True
        hidden[np.random.default_rng(15).random(len(x)) < 0.2] = True  # and 20 % at random
        searcher = Searcher(cfg, rows=len(x))
        searcher.set_hidden(np.packbits(hidden, bitorder="little"))
        searcher.tail = tail = Recording(searcher.tail)
        truth, truth_scores = reference_scored(x, hidden, q[None, :], 10)
        scores, rows = searcher.search(q[None, :], 10)
        assert not hidden[rows].any() and len(rows) == 10
        np.testing.assert_allclose(scores, truth_scores[0], atol=1e-5)
        assert [p is not None and p.sel is not None for p in tail.params] == [False, True]


def test_hidden_rows_at_random_need_no_selector(tmp_path: Path) -> None:
    # 30 % hidden at random: twice the rows the visible fraction needs hold 10 visible ones.
    cfg = make_cfg(tmp_path)
    x = unit_rows(5000, seed=16)
    append(cfg, x)
    hidden, bitmap = tombstones(len(x), 0.3, seed=17)
    searcher = Searcher(cfg, rows=len(x))
    searcher.set_hidden(bitmap)
    searcher.tail = tail = Recording(searcher.tail)
    queries = unit_rows(20, seed=18)
    truth, truth_scores = reference_scored(x, hidden, queries, 10)
    for q, ts in zip(queries, truth_scores):
        scores, rows = searcher.search(q[None, :], 10)
        assert not hidden[rows].any() and len(rows) == 10
        np.testing.assert_allclose(scores, ts, atol=1e-5)
    assert tail.params == [None] * 20


def test_the_bitmap_is_copied_and_must_be_packed_bytes(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    x = unit_rows(100, seed=12)
    append(cfg, x)
    searcher = Searcher(cfg, rows=100)
    bitmap = np.packbits(np.arange(100) == 5, bitorder="little")
    searcher.set_hidden(bitmap)
    bitmap[:] = 0  # the caller's later change does not reach the searcher until it says so
    assert 5 not in searcher.search(x[5][None, :], 3)[1]
    searcher.set_hidden(bitmap)
    assert searcher.search(x[5][None, :], 1)[1][0] == 5
    with pytest.raises(TypeError):
        searcher.set_hidden(np.arange(100) == 5)  # a bool mask, not packed bits


def test_the_approximate_index_is_asked_only_for_visible_rows(tmp_path: Path) -> None:
    # Asking it for more rows than are visible would make every such query fall back to an
    # exact scan of the whole head: IVF probing every list finds all visible rows itself.
    cfg = make_cfg(tmp_path, "ivf")
    cfg.query.ivf_nprobe = 1000
    x = unit_rows(2100, seed=13)
    append(cfg, x)
    ann_build.build(cfg.vectors_path, cfg.ann_path, ann_build.BuildParams.from_config(cfg), rows=2000)
    searcher = Searcher(cfg, rows=2100)
    hidden = np.ones(2100, dtype=bool)
    hidden[[3, 500, 1999, 2000, 2050]] = False
    searcher.set_hidden(np.packbits(hidden, bitorder="little"))
    searcher.head = head = Recording(searcher.head)
    assert sorted(searcher.search(x[3][None, :], 10)[1].tolist()) == [3, 500, 1999, 2000, 2050]
    assert head.params == []  # no exact fallback
