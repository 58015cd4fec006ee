"""Tests of the approximate index: file identity, builds and updates, merged search, scheduling."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from roxi_mp import ann, ann_build
from roxi_mp.ann_schedule import Builds
from roxi_mp.config import Config
from roxi_mp.errors import STORE, StoreError
from roxi_mp.search import Searcher
from roxi_mp.vectors import VectorWriter

DIM = 32
MODEL = "test/ann"


def unit_rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_cfg(tmp_path: Path, kind: str, **indexer: Any) -> Config:
    cfg = Config(data_dir=tmp_path)
    cfg.indexer.index = kind
    cfg.indexer.ann_min_rows = 1000
    for key, value in indexer.items():
        setattr(cfg.indexer, key, value)
    return cfg


def append(cfg: Config, x: np.ndarray) -> None:
    with VectorWriter(cfg.vectors_path, dim=DIM, model_id=MODEL) as w:
        w.append(x)
        w.sync()
        w.publish(w.rows)


def exact_top(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ x.astype(np.float16).astype(np.float32).T
    return np.argsort(-scores, axis=1)[:, :k]


def recall(searcher: Searcher, x: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    truth = exact_top(x, queries, k)
    found = [set(searcher.search(q[None, :], k)[1].tolist()) for q in queries]
    return float(np.mean([len(f & set(t.tolist())) / k for f, t in zip(found, truth)]))


@pytest.fixture(params=["hnsw", "ivf"])
def kind(request) -> str:
    return request.param


def test_build_then_search_finds_the_true_neighbours(tmp_path: Path, kind: str) -> None:
    cfg = make_cfg(tmp_path, kind)
    x = unit_rows(4000, seed=1)
    append(cfg, x)
    header = ann_build.build(cfg.vectors_path, cfg.ann_path, ann_build.BuildParams.from_config(cfg), rows=4000)
    assert (header.kind, header.rows, header.dim) == (kind, 4000, DIM)
    cfg.query.ivf_nprobe = 64  # small lists: most of them, to make recall a property of the code
    searcher = Searcher(cfg, rows=4000)
    assert searcher.info() == {"index": kind, "ann_rows": 4000}
    assert searcher.tail.ntotal == 0
    assert recall(searcher, x, unit_rows(50, seed=2)) >= 0.9
    scores, rows = searcher.search(x[1234][None, :], 5)
    assert rows[0] == 1234 and scores[0] == pytest.approx(1.0, abs=1e-3)
    assert list(scores) == sorted(scores, reverse=True)


def test_rows_beyond_the_index_are_searched_exactly_and_merged(tmp_path: Path, kind: str) -> None:
    cfg = make_cfg(tmp_path, kind)
    x = unit_rows(3000, seed=3)
    append(cfg, x[:2000])
    ann_build.build(cfg.vectors_path, cfg.ann_path, ann_build.BuildParams.from_config(cfg), rows=2000)
    append(cfg, x[2000:])
    searcher = Searcher(cfg, rows=3000)
    assert (searcher.ann_rows, searcher.tail.ntotal, searcher.ntotal) == (2000, 1000, 3000)
    for row in (0, 1999, 2000, 2999):  # each row is its own best match, on either side
        assert searcher.search(x[row][None, :], 3)[1][0] == row
    # k larger than the tail and than the index: the merged list is still k long and sorted
    scores, rows = searcher.search(x[5][None, :], 2500)
    assert len(rows) == 2500 and len(set(rows.tolist())) == 2500
    assert np.all(np.diff(scores) <= 1e-6)
    # Following a commit remaps only the tail.
    searcher.follow(2500)
    assert (searcher.ann_rows, searcher.ntotal) == (2000, 2500)


def test_an_update_extends_the_previous_index(tmp_path: Path, kind: str) -> None:
    cfg = make_cfg(tmp_path, kind)
    x = unit_rows(6000, seed=4)
    append(cfg, x)
    params = ann_build.BuildParams.from_config(cfg)
    first = ann_build.build(cfg.vectors_path, cfg.ann_path, params, rows=2000)
    second = ann_build.build(cfg.vectors_path, cfg.ann_path, params, rows=3000)
    assert second.rows == 3000
    if kind == "ivf":
        assert first.trained_rows == second.trained_rows == 2000  # added to, not retrained
    searcher = Searcher(cfg, rows=6000)
    assert searcher.search(x[2500][None, :], 1)[1][0] == 2500


def test_ivf_retrains_after_growing_past_the_limit(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "ivf")
    x = unit_rows(9000, seed=5)
    append(cfg, x)
    params = ann_build.BuildParams.from_config(cfg)
    assert ann_build.build(cfg.vectors_path, cfg.ann_path, params, rows=2000).trained_rows == 2000
    assert ann_build.build(cfg.vectors_path, cfg.ann_path, params, rows=8000).trained_rows == 2000
    assert ann_build.build(cfg.vectors_path, cfg.ann_path, params, rows=9000).trained_rows == 9000


def test_ivf_list_count() -> None:
    assert ann_build.ivf_lists_for(1_000_000) == 4000
    assert ann_build.ivf_lists_for(1_000_000, 1024) == 1024
    assert ann_build.ivf_lists_for(2000) == 51  # at least 39 training points per list
    assert ann_build.ivf_lists_for(10) == 1


def test_an_index_of_other_vectors_is_refused_and_searched_exactly(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "hnsw")
    x = unit_rows(2000, seed=6)
    append(cfg, x)
    ann_build.build(cfg.vectors_path, cfg.ann_path, ann_build.BuildParams.from_config(cfg), rows=2000)
    # Same shape, other content (what a restore or reembed leaves beside an old index).
    cfg.vectors_path.unlink()
    y = unit_rows(2000, seed=7)
    append(cfg, y)
    with pytest.raises(StoreError, match="fingerprint"):
        ann.check(cfg.ann_path, cfg.vectors_path, kind="hnsw", rows=2000)
    searcher = Searcher(cfg, rows=2000)
    assert searcher.kind == "exact" and "fingerprint" in searcher.info()["index_problem"]
    assert searcher.search(y[77][None, :], 1)[1][0] == 77
    assert ann.remove_stale(cfg.ann_path, cfg.vectors_path, kind="hnsw", rows=2000)
    assert not cfg.ann_path.exists()


@pytest.mark.parametrize("case, match", [
    ("rows", "only 1000 are committed"),
    ("kind", "holds a hnsw index"),
    ("garbage", "not an approximate index"),
    ("short", "not an approximate index"),
])
def test_check_says_why_an_index_is_unusable(tmp_path: Path, case: str, match: str) -> None:
    cfg = make_cfg(tmp_path, "hnsw")
    append(cfg, unit_rows(2000, seed=8))
    ann_build.build(cfg.vectors_path, cfg.ann_path, ann_build.BuildParams.from_config(cfg), rows=2000)
    kind, rows = "hnsw", 2000
    if case == "rows":
        rows = 1000
    elif case == "kind":
        kind = "ivf"
    elif case == "garbage":
        with open(cfg.ann_path, "r+b") as f:
            f.write(b"\xff" * 16)
    else:
        os.truncate(cfg.ann_path, 10)
    with pytest.raises(StoreError, match=match):
        ann.check(cfg.ann_path, cfg.vectors_path, kind=kind, rows=rows)
    cfg.indexer.index = kind
    searcher = Searcher(cfg, rows=rows)  # never fails a query over it: exact instead
    assert searcher.kind == "exact" and searcher.ntotal == rows


def test_remove_stale_keeps_a_good_index_and_clears_a_leftover_tmp(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "ivf")
    append(cfg, unit_rows(2000, seed=9))
    ann_build.build(cfg.vectors_path, cfg.ann_path, ann_build.BuildParams.from_config(cfg), rows=2000)
    tmp = Path(str(cfg.ann_path) + ".tmp")
    tmp.write_bytes(b"half a build")
    assert ann.remove_stale(cfg.ann_path, cfg.vectors_path, kind="ivf", rows=2000) is None
    assert cfg.ann_path.exists() and not tmp.exists()
    assert "exact" in ann.remove_stale(cfg.ann_path, cfg.vectors_path, kind="exact", rows=2000)
    assert not cfg.ann_path.exists()


def _rss_anon_kb() -> int:
    return int(re.search(r"RssAnon:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _mapped(path: Path) -> bool:
    return str(path) in Path("/proc/self/maps").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_hnsw_index_is_mapped_not_copied_and_unmapped_when_dropped(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "hnsw")
    x = unit_rows(30_000, seed=10)
    append(cfg, x)
    ann_build.build(cfg.vectors_path, cfg.ann_path, ann_build.BuildParams.from_config(cfg), rows=30_000)
    graph = cfg.ann_path.stat().st_size
    stored = cfg.ann_path.read_bytes()
    assert not any(x[r].astype(np.float16).tobytes() in stored for r in (0, 12_345, 29_999))  # links only
    before = _rss_anon_kb()
    searcher = Searcher(cfg, rows=30_000)
    searcher.search(unit_rows(1, seed=11), 10)
    assert (_rss_anon_kb() - before) * 1024 < graph / 4  # neither graph nor rows copied
    assert _mapped(cfg.ann_path) and _mapped(cfg.vectors_path)
    del searcher
    assert not _mapped(cfg.ann_path) and not _mapped(cfg.vectors_path)


def test_build_child_process(tmp_path: Path) -> None:
    conf = tmp_path / "roxi.toml"
    conf.write_text('[indexer]\nindex = "hnsw"\nann_min_rows = 1000\n')
    data = tmp_path / "data"
    data.mkdir()
    cfg = make_cfg(data, "hnsw")
    append(cfg, unit_rows(1500, seed=12))
    run = [sys.executable, "-m", "roxi_mp.ann_build", "--data-dir", str(data), "--config", str(conf)]
    done = subprocess.run([*run, "--rows", "1500"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert ann.read_header(cfg.ann_path).rows == 1500
    bad = subprocess.run([*run, "--rows", "9999"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == STORE
    assert "cannot index 9999 rows, 1500 are published" in bad.stderr
    assert ann.read_header(cfg.ann_path).rows == 1500  # the good index is untouched


# --- scheduling ------------------------------------------------------------------------
class FakeProc:
    def __init__(self) -> None:
        self.code: int | None = None
        self.terminated = False

    def poll(self) -> int | None:
        return self.code

    def terminate(self) -> None:
        self.terminated = True
        self.code = -15

    def wait(self, timeout: float | None = None) -> int | None:
        return self.code

    def kill(self) -> None:
        self.code = -9


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scheduler(tmp_path: Path, **indexer: Any) -> tuple[Builds, list[int], list[FakeProc], Clock]:
    cfg = make_cfg(tmp_path, "hnsw", ann_update_rows=500, ann_update_seconds=600.0, **indexer)
    spawned: list[int] = []
    procs: list[FakeProc] = []

    def spawn(rows: int) -> FakeProc:
        spawned.append(rows)
        procs.append(FakeProc())
        return procs[-1]

    clock = Clock()
    return Builds(cfg, spawn=spawn, clock=clock), spawned, procs, clock


def test_first_build_waits_for_min_rows_and_runs_one_at_a_time(tmp_path: Path) -> None:
    builds, spawned, procs, clock = scheduler(tmp_path)
    assert builds.step(999) is False and spawned == []
    builds.step(1000)
    assert spawned == [1000] and builds.info()["building"]
    builds.step(5000)  # still building: no second child
    assert spawned == [1000]
    procs[0].code = 0
    clock.now += 12
    assert builds.step(5000) is True
    assert builds.info() == {"index": "hnsw", "ann_rows": 1000, "building": False, "builds": 1,
                                  "build_failures": 0, "last_build_seconds": 12.0}


def test_updates_wait_for_enough_new_rows_or_time(tmp_path: Path) -> None:
    builds, spawned, procs, clock = scheduler(tmp_path)
    builds.covered = 10_000
    builds.step(10_999)  # 999 new < max(500, 10% of 10 000)
    assert spawned == []
    builds.step(11_000)
    assert spawned == [11_000]
    procs[0].code = 0
    builds.step(11_000)
    builds.step(11_001)  # one new row: not yet
    assert spawned == [11_000]
    clock.now += 600
    builds.step(11_001)  # but it is not left uncovered for longer than ann_update_seconds
    assert spawned == [11_000, 11_001]


def test_a_failed_build_is_retried_after_a_growing_backoff(tmp_path: Path) -> None:
    builds, spawned, procs, clock = scheduler(tmp_path)
    builds.step(2000)
    procs[0].code = 1
    assert builds.step(2000) is False and builds.failures == 1 and builds.covered == 0
    clock.now += 29
    builds.step(2000)
    assert spawned == [2000]
    clock.now += 1
    builds.step(2000)
    assert spawned == [2000, 2000]
    procs[1].code = 1
    builds.step(2000)
    clock.now += 59
    builds.step(2000)
    assert len(spawned) == 2  # second backoff: 60 s
    clock.now += 1
    builds.step(2000)
    assert len(spawned) == 3


def test_exact_never_builds_and_stop_ends_a_running_build(tmp_path: Path) -> None:
    builds, spawned, procs, clock = scheduler(tmp_path)
    builds.cfg.indexer.index = "exact"
    builds.step(100_000)
    assert spawned == []
    builds.cfg.indexer.index = "hnsw"
    builds.step(100_000)
    builds.stop()
    assert procs[0].terminated and builds.proc is None
