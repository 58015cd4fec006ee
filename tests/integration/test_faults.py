"""Disk faults: a full disk during ingest, and a corrupt store at start."""

from __future__ import annotations

import json
import resource

import psutil

from roxi_mp import errors
from roxi_mp.store import Store
from roxi_mp.vectors import HEADER_BYTES, read_header

from ..conftest import PATIENCE
from ..corpus import check_exactly_once, write_corpus
from .test_pipeline import roxi


def consistent(cfg) -> int:
    """The commit protocol's invariant: the file's visible rows are exactly SQLite's committed rows."""
    with Store(cfg.db_path) as store:
        committed = store.committed_rows()
        assert store.conn.execute("SELECT count(*) FROM chunks WHERE row >= ?", (committed,)).fetchone()[0] == 0
        assert store.conn.execute("SELECT count(*) FROM chunks WHERE row IS NOT NULL").fetchone()[0] == committed
    assert read_header(cfg.vectors_path).rows == committed
    return committed


def test_disk_full_during_ingest_then_space_freed_completes_exactly_once(system, make_config, tmp_path):
    """Acceptance 3: the indexer's files may not grow (RLIMIT_FSIZE: writes fail with EFBIG,
    as on a full disk); commits fail and are retried; once the limit is lifted, ingest completes."""
    cfg = make_config(hashing__dim=256, embedder__batch_size=16)
    s = system(cfg)
    write_corpus(tmp_path / "docs", docs=40, words=600)
    indexer = psutil.Process(s.pid("indexer"))
    # Room for the header and a few rows of the vectors file; the WAL may hit it too.
    limit = HEADER_BYTES + 20 * 256 * 2
    # Only the soft limit: raising a hard limit again needs CAP_SYS_RESOURCE.
    indexer.rlimit(psutil.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    assert roxi(cfg, "ingest", str(tmp_path / "docs")).returncode == 0
    total = s.stats().chunks
    s.wait_for(lambda: s.role("indexer")["commit_failures"] >= 2, timeout=PATIENCE, what="commits failing")
    failing = s.role("indexer")
    assert "File too large" in failing["last_error"] and failing["state"] == "running"
    assert failing["restarts"] == 0  # handled, not a crash loop
    shown = roxi(cfg, "status").stdout
    assert "commits failing" in shown and "File too large" in shown, shown
    assert s.stats().indexed < total
    consistent(cfg)
    assert cfg.vectors_path.stat().st_size <= limit
    # Space is back.
    indexer.rlimit(psutil.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    s.wait_indexed(total, timeout=90)
    assert consistent(cfg) == total
    assert check_exactly_once(cfg) == total
    s.wait_for(lambda: s.role("indexer")["last_error"] is None, timeout=PATIENCE, what="the error cleared")


def test_a_corrupt_vectors_header_is_a_clear_error_not_a_crash_loop(system, make_config):
    cfg = make_config(hashing__dim=64)
    s = system(cfg)
    assert s.stop() == 0
    with open(cfg.vectors_path, "r+b") as f:
        f.seek(16)
        f.write(b"GARBAGE!")  # our magic
    started = roxi(cfg, "start")
    try:
        assert started.returncode != 0
        line = started.stderr.strip()
        assert "\n" not in line and "indexer" in line and "vectors.faiss" in line and "magic" in line, line
        status = json.loads(roxi(cfg, "status", "--json").stdout)
        indexer = next(r for r in status["roles"] if r["name"] == "indexer")
        assert indexer["state"] == "failed" and indexer["restarts"] == 0  # a boot error: not respawned
    finally:
        roxi(cfg, "stop")


def test_a_corrupt_database_is_a_clear_error_at_start(make_config):
    cfg = make_config(hashing__dim=64)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    cfg.db_path.write_bytes(b"this is not a database" * 100)
    started = roxi(cfg, "start")
    assert started.returncode == errors.STORE
    line = started.stderr.strip()
    assert "\n" not in line and "roxi.sqlite3" in line and "not a usable roxi store" in line, line
    status = roxi(cfg, "status")  # nothing runs, and status says why the store is unusable
    assert status.returncode == errors.STORE and "not a usable roxi store" in status.stderr
    assert cfg.db_path.read_bytes() == b"this is not a database" * 100  # left as found
