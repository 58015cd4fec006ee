"""The approximate index with the real supervisor: built in the background, followed, crash-safe."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import psutil
import pytest

from roxi_mp import ann, ann_build
from roxi_mp.service import READY_STATES
from roxi_mp.store import Store
from roxi_mp.vectors import open_index

from ..conftest import PATIENCE, roxi_processes
from ..corpus import populate, write_corpus
from .test_pipeline import roxi

DIM = 64


def own_row_is_first(s, rows: list[int]) -> None:
    """Each row's own vector finds that row first, through the query server."""
    index = open_index(s.cfg.vectors_path)
    with s.query_client(timeout=30) as client:
        for row in rows:
            hits = client.query_vector(index.reconstruct(row), k=5, with_text=False)
            assert hits[0]["row"] == row and hits[0]["score"] == pytest.approx(1.0, abs=1e-2)


def query_stats(s) -> dict:
    with s.query_client(timeout=30) as client:
        return client.stats()


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_index_is_built_in_background_and_new_rows_are_found_before_the_update(system, make_config, tmp_path,
                                                                              kind):
    cfg = make_config(hashing__dim=DIM, indexer__index=kind, indexer__ann_min_rows=2000,
                      indexer__ann_update_rows=100_000, indexer__ann_update_seconds=3.0,
                      query__ivf_nprobe=64)
    populate(cfg, rows=3000)
    s = system(cfg)
    own_row_is_first(s, [0])  # wakes the query server (exact until the build lands)
    s.wait_for(lambda: query_stats(s)["ann_rows"] == 3000, timeout=60, what="index built and mapped")
    assert query_stats(s)["index"] == kind
    s.wait_for(lambda: s.role("indexer")["builds"] == 1, timeout=PATIENCE, what="the indexer reaped its build")
    shown = roxi(cfg, "status")
    assert f"{kind} index covers 3,000 rows (1 builds, 0 failures)" in shown.stdout, shown.stdout
    own_row_is_first(s, [0, 1500, 2999])
    # New chunks arrive through the embedder: searchable at once (exactly, beyond the index) ...
    write_corpus(tmp_path / "docs", docs=20, words=300)
    assert roxi(cfg, "ingest", str(tmp_path / "docs")).returncode == 0
    total = s.stats().chunks
    s.wait_indexed(total, timeout=60)
    s.wait_for(lambda: query_stats(s)["rows"] == total, timeout=PATIENCE, what="new rows followed")
    with Store(cfg.db_path) as store:
        row, text = store.conn.execute("SELECT row, text FROM chunks WHERE row = ?", (total - 1,)).fetchone()
    with s.query_client() as client:
        assert client.query(text, k=3)[0]["row"] == row
    # ... and folded into the index once ann_update_seconds passed.
    s.wait_for(lambda: query_stats(s)["ann_rows"] == total, timeout=60, what="index updated")
    own_row_is_first(s, [0, 3000, total - 1])


def test_kill_during_a_build_leaves_no_orphan_and_the_build_resumes(system, make_config):
    cfg = make_config(hashing__dim=DIM, indexer__index="hnsw", indexer__ann_min_rows=2000,
                      indexer__hnsw_ef_construction=80)
    populate(cfg, rows=40_000)  # a build of several seconds, for the kill to land in
    s = system(cfg)
    s.wait_for(lambda: s.role("indexer")["building"], timeout=PATIENCE, what="a build running")
    indexer = psutil.Process(s.pid("indexer"))
    builders = [c for c in indexer.children() if "roxi_mp.ann_build" in " ".join(c.cmdline())]
    assert len(builders) == 1
    os.kill(indexer.pid, signal.SIGKILL)
    psutil.wait_procs(builders, timeout=PATIENCE)  # PDEATHSIG ends the build with its indexer
    assert not builders[0].is_running()
    s.wait_for(lambda: s.role("indexer")["state"] in READY_STATES and s.pid("indexer") != indexer.pid,
               timeout=PATIENCE, what="indexer restarted")
    s.wait_for(lambda: s.role("indexer")["ann_rows"] == 40_000, timeout=120, what="index built after restart")
    assert not Path(str(cfg.ann_path) + ".tmp").exists()
    assert ann.check(cfg.ann_path, cfg.vectors_path, kind="hnsw", rows=40_000).rows == 40_000
    own_row_is_first(s, [0, 39_999])
    assert query_stats(s)["ann_rows"] == 40_000
    assert s.stop() == 0
    assert roxi_processes(cfg.data_dir) == []


def test_a_stale_index_is_never_used(system, make_config):
    """An index left from other vectors (a restore, a reembed) is removed, then rebuilt."""
    cfg = make_config(hashing__dim=DIM, indexer__index="hnsw", indexer__ann_min_rows=2000)
    populate(cfg, rows=2500, seed=1)
    ann_build.build(cfg.vectors_path, cfg.ann_path, ann_build.BuildParams.from_config(cfg), rows=2500)
    cfg.vectors_path.unlink()
    cfg.db_path.unlink()
    populate(cfg, rows=2500, seed=2)  # same shape, other vectors
    s = system(cfg)
    own_row_is_first(s, [0, 2499])  # right answers whether or not the rebuild has landed
    s.wait_for(lambda: query_stats(s)["ann_rows"] == 2500 and "index_problem" not in query_stats(s),
               timeout=60, what="index rebuilt")
    assert "no longer fits" in (cfg.log_dir / "indexer.log").read_text()
    own_row_is_first(s, [0, 1234, 2499])


def test_sleep_unmaps_the_index_too(system, make_config):
    cfg = make_config(hashing__dim=DIM, indexer__index="hnsw", indexer__ann_min_rows=2000)
    populate(cfg, rows=5000)
    s = system(cfg)
    s.wait_for(lambda: s.role("indexer")["builds"] == 1, timeout=60, what="index built")
    own_row_is_first(s, [10])
    pid = s.pid("query")
    maps = Path(f"/proc/{pid}/maps")
    assert str(cfg.ann_path) in maps.read_text()
    with s.control() as c:
        c.command("sleep")
    s.wait_for(lambda: str(cfg.ann_path) not in maps.read_text() and str(cfg.vectors_path) not in maps.read_text(),
               timeout=PATIENCE, what="index and vectors unmapped")
    np.testing.assert_equal(query_stats(s)["state"], "asleep")
