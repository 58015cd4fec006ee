"""`roxi reembed`: the old store stays whole until the new one is complete (issue 5)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys

import pytest

from roxi_mp import errors
from roxi_mp.store import Store
from roxi_mp.vectors import read_header

from ..conftest import PATIENCE, clean_env, wait_until
from ..corpus import check_exactly_once, write_corpus
from .test_pipeline import roxi

pytestmark = pytest.mark.integration


@pytest.fixture
def built(system, make_config, tmp_path):
    """A stopped store of ~300 chunks embedded with hashing-v1-256, and a config for dim 512."""
    old = make_config(hashing__dim=256)
    write_corpus(tmp_path / "docs", docs=60, words=600)
    s = system(old)
    assert roxi(old, "ingest", str(tmp_path / "docs")).returncode == 0
    s.wait_indexed(s.stats().chunks)
    assert s.stop() == 0
    new = make_config(data_dir=old.data_dir, hashing__dim=512)
    return old, new


def model_of(cfg) -> tuple[str, int]:
    with Store(cfg.db_path) as store:
        return store.model()


def test_reembed_swaps_in_a_complete_store(built, system):
    old, new = built
    chunks = check_exactly_once(old)
    result = roxi(new, "reembed", "--model", "hashing")
    assert result.returncode == 0, result.stderr
    assert model_of(new) == ("hashing-v1-512", 512)
    assert read_header(new.vectors_path).dim == 512
    assert check_exactly_once(new) == chunks
    assert (new.data_dir / "previous" / "roxi.sqlite3").exists()
    s = system(new)  # the new store serves queries under the new model
    with Store(new.db_path) as store:
        chunk_id, text = store.conn.execute("SELECT id, text FROM chunks WHERE id = 9").fetchone()
    with s.query_client() as client:
        assert client.query(text, k=1)[0]["chunk_id"] == chunk_id
    assert s.stop() == 0
    stale = system(old, start=False).start(wait=False)  # the old config is now refused, clearly
    stale.wait_for(lambda: stale.role("indexer")["state"] == "failed", timeout=PATIENCE, what="refused")
    log = (old.log_dir / "indexer.log").read_text()
    assert "hashing-v1-512" in log and "hashing-v1-256" in log


def test_killed_reembed_leaves_the_old_store_and_resumes(built):
    old, new = built
    before = check_exactly_once(old)
    proc = subprocess.Popen([sys.executable, "-m", "roxi_mp.cli", *new.to_argv(), "reembed", "--model", "hashing"],
                            env={**clean_env(), "ROXI_EMBEDDER_BATCH_SIZE": "1",  # a commit per chunk
                                 "ROXI_EMBEDDER_YIELD_BATCH_SIZE": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stage_db = new.data_dir / "staging" / "reembed" / "roxi.sqlite3"

    def partway() -> bool:
        try:  # read-only: the test must not create or lock the staged database
            conn = sqlite3.connect(f"file:{stage_db}?mode=ro", uri=True)
            try:
                row = conn.execute("SELECT value FROM meta WHERE key='committed_rows'").fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return False
        # plan.json marks a prepared copy (before it, committed_rows is the old store's)
        return (stage_db.parent / "plan.json").exists() and bool(row) and 20 <= int(row[0]) < before

    try:
        wait_until(lambda: partway() or proc.poll() is not None, timeout=PATIENCE, what="the reembed partway",
                   interval=0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert model_of(old) == ("hashing-v1-256", 256)  # the live store is untouched
    assert check_exactly_once(old) == before
    with Store(stage_db) as staged:
        partial = staged.committed_rows()
    assert 0 < partial < before, "the kill came too late to test a resume"
    result = roxi(new, "reembed", "--model", "hashing")
    assert result.returncode == 0, result.stderr
    assert f"({before - partial} embedded in this run)" in result.stdout
    assert check_exactly_once(new) == before


def test_reembed_is_refused_while_running_and_for_the_same_model(built, system):
    old, new = built
    s = system(old)
    running = roxi(new, "reembed", "--model", "hashing")
    assert running.returncode == errors.ALREADY_RUNNING and "supervisor" in running.stderr
    assert s.stop() == 0
    same = roxi(old, "reembed", "--model", "hashing")
    assert same.returncode == errors.BAD_INPUT and "already uses hashing-v1-256" in same.stderr
