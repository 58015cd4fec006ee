"""Unit tests of roxi_mp.store on real SQLite files: schema, model identity, documents,
leases, the indexer's commit, and the readers."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Iterator

import pytest

from roxi_mp import migrations
from roxi_mp.errors import STORE, ModelMismatch, StoreError
from roxi_mp.store import Hit, Stats, Store

LEASE = 10.0


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def chunks_of(*texts: str) -> list[tuple[int, str, str]]:
    return [(i, t, h(t)) for i, t in enumerate(texts)]


def add(store: Store, name: str, n: int, *, title: str | None = None) -> int:
    doc = store.add_document(content_hash=h(name), source=f"/src/{name}.md", title=title or name,
                             size=100, chunks=chunks_of(*[f"{name} chunk {i}" for i in range(n)]))
    assert doc is not None
    return doc


def states(store: Store) -> dict[int, tuple]:
    return {r[0]: tuple(r[1:]) for r in store.conn.execute(
        "SELECT id, state, lease_owner, attempts, row FROM chunks ORDER BY id")}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "roxi.sqlite3")
    yield s
    s.close()


# --- schema ----------------------------------------------------------------------
def test_migrations_create_schema_and_set_version(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    with Store(path) as s:
        tables = {r[0] for r in s.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"meta", "documents", "chunks"} <= tables
        assert s.get_meta("schema_version") == str(migrations.LATEST)
        assert s.committed_rows() == 0 and s.generation() == 0
        assert s.model() is None
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # A plain sqlite3 connection sees the same committed schema.
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] \
        == str(migrations.LATEST)
    conn.close()


def test_reopening_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    with Store(path) as s:
        s.ensure_model("m", 16)
        add(s, "a", 3)
        s.claim("o", 1, now=0, lease_seconds=LEASE)
        s.commit_rows([(1, 0)], rows=1)
    for _ in range(2):
        with Store(path) as s:
            assert s.get_meta("schema_version") == str(migrations.LATEST)
            assert s.model() == ("m", 16)
            assert s.committed_rows() == 1 and s.generation() == 1
            assert s.stats().chunks == 3
    with Store(path, migrate=False) as s:  # an up-to-date store opens without migrating
        assert s.stats().indexed == 1


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    with Store(path) as s:
        s.conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    for migrate in (True, False):
        with pytest.raises(StoreError) as info:
            Store(path, migrate=migrate)
        assert "99" in str(info.value) and str(path) in str(info.value)
        assert info.value.exit_code == STORE
    conn = sqlite3.connect(path)  # and the refusal changed nothing
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "99"
    conn.close()


def test_unmigrated_store_is_refused_without_migrate(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite3"
    sqlite3.connect(path).close()
    with pytest.raises(StoreError, match="needs migrating"):
        Store(path, migrate=False)


@pytest.mark.parametrize("size", [10, 4096])
def test_garbage_file_is_a_store_error_naming_the_path(tmp_path: Path, size: int) -> None:
    path = tmp_path / "garbage.sqlite3"
    path.write_bytes((b"this is not sqlite\x00\xff" * 300)[:size])
    with pytest.raises(StoreError) as info:
        Store(path)
    assert str(path) in str(info.value)


def test_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        Store(tmp_path / "no-such-dir" / "s.sqlite3")
    assert "no-such-dir" in str(info.value)


# --- model identity ------------------------------------------------------------------
def test_ensure_model_records_then_refuses_another(store: Store) -> None:
    store.ensure_model("hashing-v1-256", 256)
    assert store.model() == ("hashing-v1-256", 256)
    store.ensure_model("hashing-v1-256", 256)  # the same model again is fine
    with pytest.raises(ModelMismatch) as info:
        store.ensure_model("other-model", 256)
    assert "hashing-v1-256" in str(info.value) and "other-model" in str(info.value)
    with pytest.raises(ModelMismatch) as info:
        store.ensure_model("hashing-v1-256", 512)
    assert "256" in str(info.value) and "512" in str(info.value)
    assert info.value.exit_code == STORE
    assert store.model() == ("hashing-v1-256", 256)


# --- documents -------------------------------------------------------------------------
def test_add_document_counts_chunks_and_keys_documents_by_source(store: Store) -> None:
    doc = store.add_document(content_hash=h("x"), source="/a.md", title="A", size=12,
                             chunks=iter(chunks_of("one", "two", "three")))
    assert doc is not None
    row = store.conn.execute("SELECT n_chunks, title, source, bytes, key, version, status FROM documents "
                             "WHERE id=?", (doc,)).fetchone()
    assert row == (3, "A", "/a.md", 12, "/a.md", 1, "live")
    assert store.has_document(h("x"))
    # The same content again under the same key is unchanged.
    assert store.add_document(content_hash=h("x"), source="/a.md", title="A", size=12,
                              chunks=chunks_of("one", "two", "three")) is None
    # Under another key it is another document (its vectors are reused once embedded).
    again = store.add_document(content_hash=h("x"), source="/elsewhere.md", title="B", size=12,
                               chunks=chunks_of("other"))
    assert again is not None and again != doc


def test_add_document_batches_large_streams(store: Store) -> None:
    stream = ((i, f"text {i}", h(str(i))) for i in range(1234))
    doc = store.add_document(content_hash=h("big"), source="/big", title="Big", size=1,
                             chunks=stream, batch=100)
    assert store.conn.execute("SELECT n_chunks FROM documents WHERE id=?", (doc,)).fetchone()[0] == 1234
    positions = [r[0] for r in store.conn.execute("SELECT position FROM chunks ORDER BY id")]
    assert positions == list(range(1234))


def test_error_inside_the_chunk_stream_rolls_the_document_back(store: Store) -> None:
    add(store, "keep", 2)
    before = store.stats()

    def failing() -> Iterator[tuple[int, str, str]]:
        for i in range(700):  # past one insert batch, so some rows were already written
            yield i, f"t{i}", h(str(i))
        raise RuntimeError("disk vanished")

    with pytest.raises(RuntimeError, match="disk vanished"):
        store.add_document(content_hash=h("bad"), source="/bad", title="Bad", size=1, chunks=failing(),
                           batch=512)
    assert not store.has_document(h("bad"))
    assert store.stats() == before
    assert store.conn.execute("SELECT count(*) FROM chunks WHERE text LIKE 't%'").fetchone()[0] == 0
    assert not store.conn.in_transaction
    # The store is still usable after the rollback.
    add(store, "after", 1)
    assert store.stats().documents == 2


# --- leases --------------------------------------------------------------------------
def test_claim_leases_in_id_order_and_increments_attempts(store: Store) -> None:
    add(store, "a", 5)
    got = store.claim("A", 3, now=100.0, lease_seconds=LEASE)
    assert got == [(1, "a chunk 0"), (2, "a chunk 1"), (3, "a chunk 2")]
    st = states(store)
    assert [st[i] for i in (1, 2, 3)] == [("leased", "A", 1, None)] * 3
    assert st[4] == ("pending", None, 0, None)
    expires = store.conn.execute("SELECT lease_expires FROM chunks WHERE id=1").fetchone()[0]
    assert expires == 110.0
    assert store.pending_count(now=100.0) == 2
    assert store.stats().leased == 3


def test_two_owners_never_get_the_same_chunk(store: Store, tmp_path: Path) -> None:
    add(store, "a", 7)
    other = Store(tmp_path / "roxi.sqlite3")  # a second connection, as a second embedder
    try:
        a = store.claim("A", 4, now=0.0, lease_seconds=LEASE)
        b = other.claim("B", 4, now=0.0, lease_seconds=LEASE)
        c = store.claim("C", 4, now=0.0, lease_seconds=LEASE)
    finally:
        other.close()
    ids_a, ids_b = {i for i, _ in a}, {i for i, _ in b}
    assert ids_a == {1, 2, 3, 4} and ids_b == {5, 6, 7}
    assert ids_a.isdisjoint(ids_b)
    assert c == []
    owners = {cid: s[1] for cid, s in states(store).items()}
    assert owners == {1: "A", 2: "A", 3: "A", 4: "A", 5: "B", 6: "B", 7: "B"}


def test_expired_leases_are_reclaimable(store: Store) -> None:
    add(store, "a", 3)
    store.claim("A", 2, now=0.0, lease_seconds=LEASE)
    assert store.claim("B", 10, now=LEASE - 1, lease_seconds=LEASE) == [(3, "a chunk 2")]
    assert store.claim("B", 10, now=LEASE, lease_seconds=LEASE) == []  # not yet expired (strict <)
    assert store.pending_count(now=LEASE + 0.5) == 2
    again = store.claim("B", 10, now=LEASE + 0.5, lease_seconds=LEASE)
    assert [i for i, _ in again] == [1, 2]
    st = states(store)
    assert st[1] == ("leased", "B", 2, None) and st[3] == ("leased", "B", 1, None)


def test_release_returns_to_pending_or_fails_after_max_attempts(store: Store) -> None:
    add(store, "a", 3)
    store.claim("A", 3, now=0.0, lease_seconds=LEASE)
    store.release([1], owner="A", error="boom", max_attempts=3)
    store.release([2], owner="somebody-else", error="not mine")  # ignored: not the owner
    store.release([3], owner="A")
    st = states(store)
    assert st[1] == ("pending", None, 1, None) and st[3] == ("pending", None, 1, None)
    assert st[2] == ("leased", "A", 1, None)
    assert store.conn.execute("SELECT error FROM chunks WHERE id=1").fetchone()[0] == "boom"
    # Two more failed attempts on chunk 1 reach max_attempts: it becomes failed.
    for attempt in (2, 3):
        assert [i for i, _ in store.claim("A", 1, now=float(attempt), lease_seconds=LEASE)] == [1]
        store.release([1], owner="A", error=f"boom {attempt}", max_attempts=3)
    st = states(store)
    assert st[1] == ("failed", None, 3, None)
    stats = store.stats()
    assert (stats.failed, stats.pending, stats.leased) == (1, 1, 1)
    # A failed chunk is never claimed again.
    assert {i for i, _ in store.claim("B", 10, now=1000.0, lease_seconds=LEASE)}.isdisjoint({1})


# --- the indexer's commit ---------------------------------------------------------------
def test_commit_rows_marks_indexed_and_advances_rows_and_generation(store: Store) -> None:
    add(store, "a", 4)
    store.claim("A", 4, now=0.0, lease_seconds=LEASE)
    assert store.commit_rows([(2, 0), (1, 1)], rows=2) == 1
    assert store.committed_rows() == 2 and store.generation() == 1
    st = states(store)
    assert st[2] == ("indexed", None, 1, 0) and st[1] == ("indexed", None, 1, 1)
    assert st[3][0] == "leased"
    assert store.commit_rows([(3, 2)], rows=3) == 2
    assert list(store.iter_rows()) == [(2, 0), (1, 1), (3, 2)]


def test_commit_rows_refuses_a_row_count_that_does_not_add_up(store: Store) -> None:
    add(store, "a", 3)
    store.commit_rows([(1, 0)], rows=1)
    before = states(store)
    with pytest.raises(StoreError, match="does not reach"):
        store.commit_rows([(2, 1), (3, 2)], rows=4)
    with pytest.raises(StoreError):
        store.commit_rows([(2, 0)], rows=1)
    assert states(store) == before
    assert store.committed_rows() == 1 and store.generation() == 1


def test_commit_rows_refuses_already_indexed_chunks_and_rolls_back(store: Store) -> None:
    add(store, "a", 3)
    store.commit_rows([(1, 0)], rows=1)
    before = states(store)
    with pytest.raises(StoreError, match="unindexed"):
        store.commit_rows([(2, 1), (1, 2)], rows=3)  # chunk 1 already has row 0
    assert states(store) == before  # chunk 2 was not marked either
    assert store.committed_rows() == 1 and store.generation() == 1
    with pytest.raises(StoreError):
        store.commit_rows([(99, 1)], rows=2)  # no such chunk
    assert store.committed_rows() == 1
    assert not store.conn.in_transaction


def test_unindexed_filters_indexed_and_unknown_ids(store: Store) -> None:
    add(store, "a", 4)
    store.commit_rows([(2, 0)], rows=1)
    assert store.unindexed([1, 2, 3, 3, 77]) == {1, 3}
    assert store.unindexed([]) == set()
    # Longer than SQLite's parameter limit: split into parts.
    assert store.unindexed(range(1, 2001)) == {1, 3, 4}


# --- readers ---------------------------------------------------------------------------
def test_stats_counts_states_and_percent(store: Store) -> None:
    assert store.stats().percent == 0.0  # no chunks: no division by zero
    add(store, "a", 4)
    add(store, "b", 4)
    store.claim("A", 3, now=0.0, lease_seconds=LEASE)
    store.commit_rows([(1, 0), (2, 0 + 1)], rows=2)
    store.release([3], owner="A", error="x", max_attempts=1)
    stats = store.stats()
    assert stats == Stats(documents=2, chunks=8, pending=5, leased=0, indexed=2, failed=1, committed_rows=2)
    assert stats.percent == 25.0
    d = stats.as_dict()
    assert d["percent"] == 25.0 and d["failed"] == 1 and d["documents"] == 2


def test_hits_returns_document_and_chunk_fields_for_rows(store: Store) -> None:
    add(store, "alpha", 2, title="Alpha Title")
    add(store, "beta", 1, title="Beta Title")
    store.commit_rows([(3, 0), (1, 1)], rows=2)
    hits = store.hits([0, 1, 5])
    assert set(hits) == {0, 1}
    assert hits[0] == Hit(row=0, chunk_id=3, doc_id=2, key="/src/beta.md", version=1, position=0,
                          title="Beta Title", source="/src/beta.md", text="beta chunk 0")
    assert (hits[1].title, hits[1].text, hits[1].position) == ("Alpha Title", "alpha chunk 0", 0)
    assert store.hits([]) == {}
    assert store.hits([0], with_text=False)[0] == Hit(row=0, chunk_id=3, doc_id=2, key="/src/beta.md", version=1,
                                                      position=0, title="Beta Title", source="/src/beta.md",
                                                      text="")


def test_hits_document_cache_stays_bounded(store: Store, monkeypatch) -> None:
    monkeypatch.setattr("roxi_mp.store_hits.DOC_CACHE_ENTRIES", 2)
    for name in ("a", "b", "c"):
        add(store, name, 1, title=name.upper())
    store.commit_rows([(1, 0), (2, 1), (3, 2)], rows=3)
    assert [store.hits([r])[r].title for r in (0, 1, 2, 0)] == ["A", "B", "C", "A"]
    assert len(store._doc_cache) <= 2


def test_a_document_cache_cleared_in_a_lookup_still_answers_every_row(store: Store, monkeypatch) -> None:
    """A lookup whose new documents overflow the cache clears it, and reads again the cached
    ones it asked for too: their hits were silently left out before."""
    monkeypatch.setattr("roxi_mp.store_hits.DOC_CACHE_ENTRIES", 2)
    for name in ("a", "b", "c"):
        add(store, name, 1, title=name.upper())
    store.commit_rows([(1, 0), (2, 1), (3, 2)], rows=3)
    assert store.hits([0])[0].title == "A"  # cached
    hits = store.hits([0, 1, 2])  # two more: over the bound, so the cache is cleared first
    assert {row: hit.title for row, hit in hits.items()} == {0: "A", 1: "B", 2: "C"}
