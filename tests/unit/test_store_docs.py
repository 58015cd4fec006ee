"""Unit tests of roxi_mp.store_docs on real SQLite files: keys and versions, replace and
delete, promotion inside the commit, vectors reused by text hash, the query server's
visibility reads, and the migration of a schema-2 store."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from roxi_mp import migrations
from roxi_mp.errors import NotFound
from roxi_mp.store import Store


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def put(store: Store, key: str, *texts: str, title: str = "T", metadata: dict | None = None):
    content = "\n".join(texts)
    return store.put_document(key=key, content_hash=h(content), source=key, title=title, size=len(content),
                              chunks=[(i, t, h(t)) for i, t in enumerate(texts)], metadata=metadata)


def index_all(store: Store) -> list[tuple[int, int]]:
    """Commit a row for every chunk waiting for one (pending or copy), as the indexer does."""
    ids = [r[0] for r in store.conn.execute(
        "SELECT id FROM chunks WHERE row IS NULL AND state IN ('pending', 'copy', 'leased') ORDER BY id")]
    first = store.committed_rows()
    pairs = list(zip(ids, range(first, first + len(ids))))
    if pairs:
        store.commit_rows(pairs, rows=first + len(pairs))
    return pairs


def status(store: Store, key: str) -> dict[int, str]:
    return dict(store.conn.execute("SELECT version, status FROM documents WHERE key=?", (key,)).fetchall())


def visible_rows(store: Store) -> set[int]:
    rows = store.committed_rows()
    return set(range(rows)) - set(store.hidden_rows(0, rows).tolist())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "roxi.sqlite3")
    yield s
    s.close()


def test_first_version_is_live_at_once_and_identical_put_is_unchanged(store: Store) -> None:
    first = put(store, "k", "alpha", "beta")
    assert (first.outcome, first.version, first.chunks) == ("added", 1, 2)
    assert status(store, "k") == {1: "live"}
    again = put(store, "k", "alpha", "beta")
    assert (again.outcome, again.version, again.doc_id) == ("unchanged", 1, first.doc_id)
    # A changed title or metadata is a new version, even with the same text.
    assert put(store, "k", "alpha", "beta", title="New").outcome == "replaced"


def test_replacement_stays_pending_until_indexed_then_swaps_in_one_commit(store: Store) -> None:
    put(store, "k", "old one", "shared")
    index_all(store)
    v1_rows = visible_rows(store)
    assert len(v1_rows) == 2
    second = put(store, "k", "new one", "shared")
    assert (second.outcome, second.version, second.reused) == ("replaced", 2, 1)
    assert status(store, "k") == {1: "live", 2: "pending"}
    states = dict(store.conn.execute("SELECT text, state FROM chunks WHERE doc_id=?", (second.doc_id,)))
    assert states == {"new one": "pending", "shared": "copy"}
    seq = store.visibility().seq
    # Half of v2 indexed: still v1 only, and v2's row is hidden.
    cid = store.conn.execute("SELECT id FROM chunks WHERE doc_id=? AND text='new one'", (second.doc_id,)).fetchone()[0]
    store.commit_rows([(cid, 2)], rows=3)
    assert status(store, "k") == {1: "live", 2: "pending"}
    assert visible_rows(store) == v1_rows
    # The copy commits: v2 is live, v1 dead, in the same transaction.
    index_all(store)
    assert status(store, "k") == {1: "dead", 2: "live"}
    assert visible_rows(store) == {2, 3}
    assert store.reused_vectors() == 0  # index_all does not say they were copies
    hidden, shown = store.changed_rows(seq, store.committed_rows())
    assert sorted(hidden.tolist()) == sorted(v1_rows) and sorted(shown.tolist()) == [2, 3]
    assert store.visibility().seq > seq
    stats = store.stats()
    assert (stats.documents, stats.dead_rows, stats.live_rows, stats.chunks, stats.indexed) == (1, 2, 2, 2, 2)


def test_a_newer_put_supersedes_a_pending_version(store: Store) -> None:
    put(store, "k", "v1")
    index_all(store)
    second = put(store, "k", "v2 text")
    third = put(store, "k", "v3 text")
    assert third.superseded == 2
    assert status(store, "k") == {1: "live", 2: "dead", 3: "pending"}
    assert {r[0] for r in store.conn.execute("SELECT state FROM chunks WHERE doc_id=?", (second.doc_id,))} \
        == {"dropped"}
    # A late delivery for the superseded chunk takes a row that stays hidden.
    cid = store.conn.execute("SELECT id FROM chunks WHERE doc_id=?", (second.doc_id,)).fetchone()[0]
    store.commit_rows([(cid, 1)], rows=2)
    assert store.conn.execute("SELECT state FROM chunks WHERE id=?", (cid,)).fetchone()[0] == "dropped"
    assert 1 not in visible_rows(store)
    index_all(store)
    assert status(store, "k") == {1: "dead", 2: "dead", 3: "live"}
    assert visible_rows(store) == {2}


def test_delete_kills_every_version_and_unknown_keys_are_not_found(store: Store) -> None:
    put(store, "a", "a text")
    put(store, "b", "b text")
    index_all(store)
    put(store, "a", "a text two")  # pending
    assert store.delete_document("a") == 2
    assert status(store, "a") == {1: "dead", 2: "dead"}
    assert visible_rows(store) == {1}
    with pytest.raises(NotFound) as err:
        store.delete_document("a")
    assert err.value.code == "not_found" and err.value.exit_code == 5
    with pytest.raises(NotFound):
        store.document("a")
    # A put after a delete starts a live version again.
    again = put(store, "a", "a text")
    assert (again.outcome, again.version) == ("added", 3)


def test_copies_are_claimed_with_their_source_row_or_sent_back_to_embedding(store: Store) -> None:
    put(store, "a", "same words")
    index_all(store)
    b = put(store, "b", "same words", "fresh words")
    assert b.reused == 1
    assert store.has_copies()
    claimed = store.claim_copies(10)
    assert [row for _, row in claimed] == [0]
    # Once the source row is gone (compacted away), a copy is embedded instead.
    store.conn.execute("UPDATE chunks SET row=NULL, state='dropped' WHERE doc_id=(SELECT id FROM documents "
                       "WHERE key='a')")
    assert store.claim_copies(10) == []
    assert not store.has_copies()
    assert store.conn.execute("SELECT count(*) FROM chunks WHERE state='pending'").fetchone()[0] == 2


def test_commit_rows_counts_reused_vectors(store: Store) -> None:
    put(store, "a", "words")
    cid = store.conn.execute("SELECT id FROM chunks").fetchone()[0]
    store.commit_rows([(cid, 0)], rows=1, reused=1)
    assert store.reused_vectors() == 1 and store.stats().reused == 1


def test_document_and_documents_describe_versions_and_page_by_key(store: Store) -> None:
    for key in ("c", "a", "b"):
        put(store, key, f"{key} text", metadata={"lang": "en", "n": 1})
    index_all(store)
    put(store, "b", "b text two")
    got = store.document("b")
    assert got["live"]["version"] == 1 and got["pending"]["version"] == 2
    assert got["live"]["metadata"] == {"lang": "en", "n": 1}
    assert got["pending"]["chunk_states"] == {"pending": 1}
    page = store.documents(limit=2)
    # Pages are of keys: a key's live and pending versions are never split.
    assert [(d["key"], d["status"]) for d in page] == [("a", "live"), ("b", "live"), ("b", "pending")]
    rest = store.documents(after="b", limit=10)
    assert [d["key"] for d in rest] == ["c"]
    assert [d["key"] for d in store.documents(state="pending")] == ["b"]
    store.conn.execute("UPDATE chunks SET state='failed' WHERE text='c text'")
    assert [d["key"] for d in store.documents(state="failed")] == ["c"]
    assert store.keys_with_prefix("b") == ["b"]


def test_hidden_rows_agree_between_range_and_state_scans(store: Store, monkeypatch) -> None:
    for i in range(30):
        put(store, f"k{i}", f"text {i}", f"more {i}")
    index_all(store)
    for i in range(0, 30, 3):
        store.delete_document(f"k{i}")
    put(store, "k1", "text 1 v2")
    index_all(store)  # k1 v2 live now
    put(store, "k2", "text 2 v2")
    index_all(store)  # k2 v2 live too
    put(store, "k4", "text 4 v2", "more 4 v2")  # pending: its rows hidden once committed
    pairs = index_all(store)[:1]
    assert pairs
    rows = store.committed_rows()
    small = np.sort(store.hidden_rows(0, rows))
    import roxi_mp.store_docs as sd
    monkeypatch.setattr(sd, "RANGE_SCAN_ROWS", 0)
    assert np.array_equal(np.sort(store.hidden_rows(0, rows)), small)
    dead = {r[0] for r in store.conn.execute(
        "SELECT c.row FROM chunks c JOIN documents d ON d.id=c.doc_id WHERE d.status != 'live' "
        "AND c.row IS NOT NULL")}
    assert set(small.tolist()) == dead


def test_visibility_is_one_snapshot(tmp_path: Path) -> None:
    reader = Store(tmp_path / "s.sqlite3")
    writer = Store(tmp_path / "s.sqlite3")
    put(writer, "k", "text")
    index_all(writer)
    with reader.snapshot():
        before = reader.visibility()
        writer.delete_document("k")
        assert reader.visibility() == before  # the snapshot holds
        assert reader.hidden_rows(0, 1).size == 0
    assert reader.visibility().seq > before.seq
    assert reader.hidden_rows(0, 1).tolist() == [0]
    reader.close()
    writer.close()


def test_migration_from_schema_2_keys_documents_by_source(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    for number, sql in migrations.MIGRATIONS[:2]:
        conn.executescript(sql)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '2')")
    # The same path ingested twice (the old bug): the newest copy is the live version.
    for doc_id, content, source in ((1, "h1", "/a.md"), (2, "h2", "/b.md"), (3, "h3", "/a.md")):
        conn.execute("INSERT INTO documents(id, content_hash, source, title, bytes, n_chunks, created) "
                     "VALUES (?, ?, ?, 'T', 1, 1, 0)", (doc_id, content, source))
        conn.execute("INSERT INTO chunks(doc_id, position, text, hash, state, row) VALUES (?, 0, ?, ?, 'indexed', ?)",
                     (doc_id, content, content, doc_id - 1))
    conn.commit()
    conn.close()
    with Store(path) as s:
        assert s.get_meta("schema_version") == str(migrations.LATEST)
        got = s.conn.execute("SELECT id, key, version, status FROM documents ORDER BY id").fetchall()
        assert got == [(1, "/a.md", 1, "dead"), (2, "/b.md", 1, "live"), (3, "/a.md", 2, "live")]
        assert dict(s.conn.execute("SELECT doc_id, state FROM chunks")) == {1: "dropped", 2: "indexed", 3: "indexed"}
        assert s.hidden_rows(0, 3).tolist() == [0]
        assert s.conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert s.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        s.delete_document("/a.md")  # the cascade and indexes work on the rebuilt tables
        assert s.hidden_rows(0, 3).tolist() == [0, 2]
