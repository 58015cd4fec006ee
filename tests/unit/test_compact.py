"""Compaction steps with a real store and real files (roxi_mp.compact, compact_swap).

Each store holds a distinct vector per chunk text (tests.compact_audit.vec), so the audit can
check that every chunk's row holds its own vector. Crashes are simulated by running the
steps partially (never cleaning up, as a kill -9 would not), then starting a fresh indexer,
whose start must leave the old store or the new one, never a mix.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq

from roxi_mp import compact, compact_swap
from roxi_mp.config import Config
from roxi_mp.roles.indexer import Indexer
from roxi_mp.store import Store
from roxi_mp.vectors import VectorWriter
from tests.compact_audit import audit, commit_pending, put, texts_of, unit_config, vectors_files
from tests.unit.test_roles import DIM, FAST, MODEL_ID


@pytest.fixture
def cfg(make_config):
    yield from unit_config(make_config, **FAST)


def build(cfg: Config, *, docs: int = 30, chunks: int = 10, delete: int = 12) -> dict:
    """`docs` documents committed, the first `delete` of them deleted (their rows dead)."""
    with Store(cfg.db_path) as store:
        store.ensure_model(MODEL_ID, DIM)
        for d in range(docs):
            put(store, f"doc{d}", texts_of(f"doc{d}", chunks))
    commit_pending(cfg, model_id=MODEL_ID, dim=DIM)
    with Store(cfg.db_path) as store:
        for d in range(delete):
            store.delete_document(f"doc{d}")
        return {"rows": store.committed_rows(), "dead": store.dead_rows()}


def start_indexer(cfg: Config) -> None:
    """A fresh indexer's start (which removes what an interrupted compaction left), then stop."""
    ctx = zmq.Context()
    role = Indexer(cfg, ctx)
    try:
        role.initialize()
    finally:
        role.shutdown()
        ctx.destroy(linger=0)


def compact_fully(cfg: Config) -> compact_swap.Switched:
    with Store(cfg.db_path) as store:
        rows, epoch = store.committed_rows(), store.vectors_epoch()
    compact.run(cfg, epoch + 1)
    switched = compact_swap.finish(cfg, epoch=epoch + 1, rows_now=rows, started=time.monotonic())
    switched.writer.close()
    cleanup = compact_swap.Cleanup(cfg, epoch + 1)
    with Store(cfg.db_path) as store:
        for _ in range(100):  # a few bounded steps, not one per page
            if not cleanup.step(store):
                break
        else:
            raise AssertionError("the cleanup did not end")
    return switched


def test_a_compaction_keeps_the_live_rows_and_gives_the_rest_back(cfg: Config) -> None:
    before = build(cfg)
    assert before == {"rows": 300, "dead": 120}
    with Store(cfg.db_path) as store:
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    switched = compact_fully(cfg)
    with Store(cfg.db_path) as store:  # SQLite gave the dropped chunks' pages back to the OS
        assert store.conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
        assert store.conn.execute("PRAGMA page_count").fetchone()[0] < pages
    facts = audit(cfg, dim=DIM)
    assert (facts["epoch"], facts["rows"], facts["dead"]) == (1, 180, 0)
    assert vectors_files(cfg.data_dir) == ["vectors.1.faiss"]
    assert not list(cfg.data_dir.glob("compact.*"))
    assert switched.record["rows_before"] == 300 and switched.record["rows_after"] == 180
    assert switched.record["bytes_reclaimed"] == 120 * 2 * DIM
    with Store(cfg.db_path) as store:
        assert store.conn.execute("SELECT count(*) FROM chunks WHERE state='dropped'").fetchone()[0] == 0
        # A deleted key keeps its newest (dead) version, chunkless, so a new put is version 2.
        assert store.conn.execute("SELECT count(*) FROM documents WHERE status='dead'").fetchone()[0] == 12
        assert store.conn.execute("SELECT count(*) FROM chunks c JOIN documents d ON d.id=c.doc_id "
                                  "WHERE d.status='dead'").fetchone()[0] == 0
        assert put(store, "doc0", ["back again"]).version == 2
        assert compact_swap.history(store) == (1, switched.record)
        assert store.visibility().epoch == 1 and store.generation() == switched.generation


def test_replaced_versions_and_rows_committed_during_the_copy(cfg: Config) -> None:
    build(cfg, docs=20, chunks=5, delete=4)
    with Store(cfg.db_path) as store:
        for d in range(4, 8):  # new versions: the old ones are dead once these are indexed
            put(store, f"doc{d}", texts_of(f"doc{d}", 5, version=2))
    commit_pending(cfg, model_id=MODEL_ID, dim=DIM)
    with Store(cfg.db_path) as store:
        assert store.dead_rows() == 40
    compact.run(cfg, 1)  # the child's snapshot: 120 rows, 80 kept
    # Meanwhile: more documents committed into the old file, and a live one deleted.
    with Store(cfg.db_path) as store:
        put(store, "late", texts_of("late", 7))
        store.delete_document("doc10")
    commit_pending(cfg, model_id=MODEL_ID, dim=DIM)
    with Store(cfg.db_path) as store:
        rows_now = store.committed_rows()
    assert rows_now == 127
    switched = compact_swap.finish(cfg, epoch=1, rows_now=rows_now, started=time.monotonic())
    switched.writer.close()
    facts = audit(cfg, dim=DIM, strays_allowed=True)
    assert facts["rows"] == 87 and facts["dead"] == 5  # doc10, deleted after the snapshot: a tombstone
    with Store(cfg.db_path) as store:
        late = [r[0] for r in store.conn.execute(
            "SELECT c.row FROM chunks c JOIN documents d ON d.id=c.doc_id WHERE d.key='late' ORDER BY c.position")]
        assert late == list(range(80, 87))  # old R + j -> len(kept) + j
        assert store.document("doc5")["live"]["version"] == 2


class Crash(Exception):
    """Stands for a kill -9: nothing after it runs, nothing is cleaned up."""


def crash_at(cfg: Config, point: str, monkeypatch) -> None:
    """Run a compaction until `point`, as a kill would stop it."""
    if point == "child midway":
        with Store(cfg.db_path) as store:
            _, _, kept = compact.snapshot(store)
        with open(cfg.vectors_path, "rb") as f, VectorWriter(cfg.vectors_file(1), dim=DIM, model_id=MODEL_ID) as w:
            w.append(compact._read_block(f.fileno(), kept[:50], 2 * DIM).view("<f2").reshape(-1, DIM))
        return
    compact.run(cfg, 1)
    if point == "child done":
        return
    with Store(cfg.db_path) as store:
        rows = store.committed_rows()
    if point == "tail copied":
        monkeypatch.setattr(compact_swap, "renumbering", lambda *a: (_ for _ in ()).throw(Crash()))
    elif point == "switch transaction":
        def dying(store, *args, **kwargs):  # inside the transaction: rolled back, as by a kill
            store.conn.execute("BEGIN IMMEDIATE")
            store.conn.execute("UPDATE chunks SET row=NULL WHERE row < 10")
            raise Crash()
        monkeypatch.setattr(compact_swap, "switch", dying)
    elif point == "switched":
        monkeypatch.setattr(VectorWriter, "publish", lambda *a: (_ for _ in ()).throw(Crash()))
    monkeypatch.setattr(compact_swap.Path, "unlink", lambda *a, **k: None)  # a kill cleans nothing up
    with pytest.raises(Crash):
        compact_swap.finish(cfg, epoch=1, rows_now=rows, started=time.monotonic())
    monkeypatch.undo()


@pytest.mark.parametrize("point,epoch", [("child midway", 0), ("child done", 0), ("tail copied", 0),
                                         ("switch transaction", 0), ("switched", 1)])
def test_a_fresh_start_after_a_crash_leaves_one_whole_store(cfg: Config, monkeypatch, point: str,
                                                          epoch: int) -> None:
    build(cfg)
    crash_at(cfg, point, monkeypatch)
    assert len(vectors_files(cfg.data_dir)) == 2  # both files are there when it died
    start_indexer(cfg)
    facts = audit(cfg, dim=DIM)
    assert facts["epoch"] == epoch and facts["rows"] == (300 if epoch == 0 else 180)
    assert not list(cfg.data_dir.glob("compact.*"))
    compact_fully(cfg)  # and the next compaction goes through
    facts = audit(cfg, dim=DIM)
    assert facts["rows"] == 180 and facts["epoch"] == epoch + 1


def test_a_crash_during_the_cleanup_leaves_the_new_store(cfg: Config) -> None:
    build(cfg)
    compact.run(cfg, 1)
    compact_swap.finish(cfg, epoch=1, rows_now=300, started=time.monotonic()).writer.close()
    cleanup = compact_swap.Cleanup(cfg, 1)
    with Store(cfg.db_path) as store:
        cleanup.step(store)  # the old file is gone
        cleanup.step(store)  # a first batch of chunks deleted, then the kill
    start_indexer(cfg)
    assert audit(cfg, dim=DIM)["epoch"] == 1


def test_a_switch_refuses_a_store_that_moved_on(cfg: Config) -> None:
    build(cfg)
    compact.run(cfg, 1)
    with pytest.raises(Exception, match="moved on"):
        compact_swap.finish(cfg, epoch=1, rows_now=299, started=time.monotonic())
    assert vectors_files(cfg.data_dir) == ["vectors.faiss"]  # the new file is removed
    assert audit(cfg, dim=DIM, strays_allowed=True)["epoch"] == 0


def test_the_child_refuses_a_wrong_epoch_and_streams_in_blocks(cfg: Config, monkeypatch) -> None:
    build(cfg)
    with pytest.raises(Exception, match="epoch"):
        compact.run(cfg, 2)
    monkeypatch.setattr(compact, "COPY_BLOCK_ROWS", 7)  # many blocks, runs split across them
    result = compact.run(cfg, 1)
    got, kept = compact.read_result(cfg, 1)
    assert got == result and len(kept) == 180 and np.all(np.diff(kept) > 0)
    raw = np.memmap(cfg.vectors_file(1), dtype="<f2", mode="r", offset=81).reshape(-1, DIM)
    old = np.memmap(cfg.vectors_path, dtype="<f2", mode="r", offset=81).reshape(-1, DIM)
    np.testing.assert_array_equal(raw, old[kept])
