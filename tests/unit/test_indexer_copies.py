"""The indexer's copy path: a chunk whose text was embedded before gets that row's vector.

Driven in-process like tests/unit/test_roles.py: a real store, vectors file and sockets,
`loop(now)` called directly. No embedder runs, so every row these tests see committed for a
copy chunk came from the copy path, not from an embedding.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zmq

from roxi_mp.config import Config
from roxi_mp.roles.indexer import Indexer, IState
from roxi_mp.store import Store
from roxi_mp.vectors import HEADER_BYTES
from tests.unit.test_roles import DIM, FAST, MODEL_ID, drive, embed, h

A = ["gout is a crystal arthritis of the big toe", "lupus has antinuclear antibodies"]


def put(store: Store, key: str, texts: list[str]):
    body = "\n".join(texts)
    return store.put_document(key=key, content_hash=h(body), source=key, title=key, size=len(body),
                              chunks=[(i, t, h(t)) for i, t in enumerate(texts)])


def commit_embedded(cfg: Config, texts: list[str]) -> None:
    """What an embedder and the indexer would have done for every pending chunk."""
    from roxi_mp.commit import commit
    from roxi_mp.vectors import VectorWriter

    with Store(cfg.db_path) as store, VectorWriter(cfg.vectors_path, dim=DIM, model_id=MODEL_ID) as w:
        w.recover(store.committed_rows())
        rows = store.conn.execute("SELECT id, text FROM chunks WHERE state='pending' ORDER BY id").fetchall()
        commit(store, w, [r[0] for r in rows], embed([r[1] for r in rows]))


def file_matrix(cfg: Config) -> np.ndarray:
    return np.frombuffer(cfg.vectors_path.read_bytes()[HEADER_BYTES:], dtype="<f2").reshape(-1, DIM)


@pytest.fixture
def cfg(make_config):
    made = make_config(**FAST)
    made.data_dir.mkdir(parents=True, exist_ok=True)
    made.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    yield made
    if not str(made.run_dir).startswith(str(made.data_dir)):  # a fallback run dir under /tmp
        shutil.rmtree(made.run_dir, ignore_errors=True)


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def indexer(cfg: Config, zctx: zmq.Context):
    with Store(cfg.db_path) as store:
        store.ensure_model(MODEL_ID, DIM)
        put(store, "a", A)
    commit_embedded(cfg, A)
    role = Indexer(cfg, zctx)
    role.initialize()
    try:
        yield role
    finally:
        role.shutdown()


def test_a_copy_chunk_gets_its_twin_s_vector_without_an_embedder(cfg: Config, indexer: Indexer) -> None:
    with Store(cfg.db_path) as store:
        result = put(store, "b", [A[1], "a new sentence nobody embedded"])
    assert result.reused == 1
    drive(indexer, lambda: indexer.copied == 1, what="the copy committed")
    with Store(cfg.db_path) as store:
        rows = dict(store.conn.execute("SELECT text, row FROM chunks WHERE doc_id=?", (result.doc_id,)).fetchall())
        states = dict(store.conn.execute("SELECT text, state FROM chunks WHERE doc_id=?", (result.doc_id,)))
        source = store.conn.execute("SELECT row FROM chunks WHERE doc_id != ? AND text=?",
                                    (result.doc_id, A[1])).fetchone()[0]
        assert store.reused_vectors() == 1 and store.committed_rows() == 3
    assert rows[A[1]] == 2 and states[A[1]] == "indexed"
    assert states["a new sentence nobody embedded"] == "pending"  # left to the embedders
    matrix = file_matrix(cfg)
    np.testing.assert_array_equal(matrix[2], matrix[source])
    np.testing.assert_array_equal(matrix[2], embed([A[1]])[0])
    assert indexer.info()["copied"] == 1


def test_a_replacement_made_only_of_known_texts_goes_live_without_an_embedder(cfg: Config,
                                                                              indexer: Indexer) -> None:
    with Store(cfg.db_path) as store:
        result = put(store, "a", [A[1], A[0]])  # the same texts, in another order: a new version
    assert (result.outcome, result.reused) == ("replaced", 2)
    drive(indexer, lambda: indexer.copied == 2, what="both copies committed")
    with Store(cfg.db_path) as store:
        assert store.document("a")["live"]["version"] == 2 and "pending" not in store.document("a")
        assert store.dead_rows() == 2  # the first version's rows are tombstones now
        new = dict(store.conn.execute("SELECT position, row FROM chunks WHERE doc_id=?", (result.doc_id,)))
    matrix = file_matrix(cfg)
    np.testing.assert_array_equal(matrix[new[0]], embed([A[1]])[0])
    np.testing.assert_array_equal(matrix[new[1]], embed([A[0]])[0])


def test_a_sleeping_indexer_wakes_for_copies_when_told_of_work(cfg: Config, indexer: Indexer) -> None:
    indexer.state = IState.ASLEEP
    indexer.next_copy_check = float("inf")  # it would look by itself only much later
    with Store(cfg.db_path) as store:
        put(store, "c", [A[0]])
    indexer.loop(0.0)
    assert indexer.copied == 0 and indexer.state is IState.ASLEEP
    indexer.command({"op": "work"}, 0.0)
    drive(indexer, lambda: indexer.copied == 1, what="the copy after the work notice")
    assert indexer.state is IState.AWAKE


def test_a_copy_whose_vector_was_dropped_with_its_document_is_still_copied(cfg: Config,
                                                                          indexer: Indexer) -> None:
    # The tombstone row still holds the vector until a compaction removes it.
    with Store(cfg.db_path) as store:
        store.delete_document("a")
        put(store, "d", [A[0]])
    drive(indexer, lambda: indexer.copied == 1, what="copied from a tombstone")
    np.testing.assert_array_equal(file_matrix(cfg)[2], embed([A[0]])[0])
