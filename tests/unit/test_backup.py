"""Backups: online snapshots under concurrent commits, strict verification, atomic restore."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from roxi_mp import backup
from roxi_mp.backup import BackupError, Manifest, create, list_backups, prune, restore, verify
from roxi_mp.commit import commit
from roxi_mp.embedders import make_embedder
from roxi_mp.errors import AlreadyRunning, BadInput
from roxi_mp.lock import DataDirLock
from roxi_mp.store import Store
from roxi_mp.vectors import HEADER_BYTES, VectorWriter, open_index, read_header

from ..corpus import check_exactly_once, populate


def add_rows(cfg, n: int, *, tag: str, batch: int = 500) -> None:
    """Commit `n` chunks with their real embeddings (so check_exactly_once holds)."""
    model = make_embedder(cfg)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    with Store(cfg.db_path) as store:
        store.ensure_model(model.model_id, model.dim)
        with VectorWriter(cfg.vectors_path, dim=model.dim, model_id=model.model_id) as writer:
            writer.recover(store.committed_rows())
            for start in range(0, n, batch):
                commit_batch(store, writer, model, f"{tag}-{start}", min(batch, n - start))


def commit_batch(store: Store, writer: VectorWriter, model, doc: str, n: int) -> None:
    texts = [f"{doc} chunk {i} synovial joint inflammation token{i}" for i in range(n)]
    store.add_document(content_hash=doc, source=f"test/{doc}", title=doc, size=n,
                       chunks=((i, t, f"h{doc}-{i}") for i, t in enumerate(texts)))
    ids = [r[0] for r in store.conn.execute("SELECT id FROM chunks WHERE row IS NULL ORDER BY id")]
    commit(store, writer, ids, model.encode(texts))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(data_dir: Path) -> dict[str, str]:
    """Every file of a data directory and its hash (the lock file's pid text aside)."""
    return {str(p.relative_to(data_dir)): sha(p) for p in sorted(data_dir.rglob("*"))
            if p.is_file() and p.name != "supervisor.lock"}


def rewrite_manifest(path: Path, **changes) -> None:
    raw = json.loads((path / "manifest.json").read_text())
    raw.update(changes)
    (path / "manifest.json").write_text(json.dumps(raw))


def refresh_checksums(path: Path) -> None:
    """Make the manifest match the files as they are now: tampering a checksum cannot see."""
    files = json.loads((path / "manifest.json").read_text())["files"]
    rewrite_manifest(path, files={name: {"bytes": (path / name).stat().st_size, "sha256": sha(path / name)}
                                  for name in files})


@pytest.fixture
def cfg(make_config):
    return make_config()


def test_create_on_a_populated_store_verifies_and_is_listed(cfg, tmp_path):
    populate(cfg, rows=3000)
    root = tmp_path / "backups"
    seen = []
    path = create(cfg, root, kind="scheduled", progress=lambda done, total: seen.append((done, total)))
    manifest = verify(path)
    assert path.parent == root and not path.name.endswith(".partial")
    assert (manifest.format_version, manifest.kind, manifest.rows, manifest.chunks, manifest.indexed,
            manifest.documents, manifest.dim) == (1, "scheduled", 3000, 3000, 3000, 1, 256)
    assert manifest.model_id == make_embedder(cfg).model_id
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "roxi.sqlite3", "vectors.faiss"]
    assert manifest.files["vectors.faiss"]["bytes"] == HEADER_BYTES + 3000 * 2 * 256
    for name, entry in manifest.files.items():
        assert entry == {"bytes": (path / name).stat().st_size, "sha256": sha(path / name)}
    assert seen and seen[-1][0] == seen[-1][1] and all(a <= b for (a, _), (b, _) in zip(seen, seen[1:]))
    infos = list_backups(root)
    assert [i.path for i in infos] == [path] and infos[0].manifest == manifest
    assert infos[0].bytes == sum(e["bytes"] for e in manifest.files.values())
    assert Manifest.from_json(manifest.to_json(), path=path) == manifest
    head = (path / "roxi.sqlite3").read_bytes()[:20]
    assert head[18] == head[19] == 1  # journal mode DELETE: one self-contained file
    assert not list(root.glob("*.partial"))


def test_backups_taken_during_commits_are_each_consistent(cfg, tmp_path):
    add_rows(cfg, 500, tag="seed")
    model = make_embedder(cfg)
    stop = threading.Event()
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            with Store(cfg.db_path) as store, \
                    VectorWriter(cfg.vectors_path, dim=model.dim, model_id=model.model_id) as writer:
                n = 0
                while not stop.is_set():
                    commit_batch(store, writer, model, f"live-{n}", 37)
                    n += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=ingest)
    thread.start()
    paths = []
    try:
        for _ in range(5):
            paths.append(create(cfg, tmp_path / "backups"))
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
    rows = []
    for path in paths:
        manifest = verify(path)
        conn = sqlite3.connect(path / "roxi.sqlite3")
        committed = int(conn.execute("SELECT value FROM meta WHERE key='committed_rows'").fetchone()[0])
        conn.close()
        assert manifest.rows == committed == read_header(path / "vectors.faiss").rows
        rows.append(committed)
    assert rows == sorted(rows) and rows[-1] > 500  # commits went on while backups were taken


def test_restore_into_a_fresh_data_dir_searches_like_the_live_store(cfg, make_config, tmp_path):
    add_rows(cfg, 3000, tag="a")
    path = create(cfg, tmp_path / "backups")
    add_rows(cfg, 400, tag="b")  # the live store moves on past the backup
    other = make_config(data_dir=tmp_path / "fresh" / "data")
    manifest = restore(other, path)
    assert manifest.rows == 3000 and check_exactly_once(other) == 3000
    with Store(other.db_path) as store:
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    queries = make_embedder(cfg).encode(["synovial inflammation token7", "joint chunk 12", "a-500 token3"])
    restored, live = open_index(other.vectors_path), open_index(cfg.vectors_path, rows=3000)
    assert restored.ntotal == live.ntotal == 3000
    got, want = restored.search(queries, 10), live.search(queries, 10)
    assert np.array_equal(got[1], want[1]) and np.array_equal(got[0], want[0])
    assert not (other.data_dir / "staging" / "restore").exists()


def test_restore_replaces_a_live_store_and_keeps_the_old_one(cfg, tmp_path):
    add_rows(cfg, 300, tag="a")
    path = create(cfg, tmp_path / "backups")
    add_rows(cfg, 200, tag="b")
    restore(cfg, path)
    assert check_exactly_once(cfg) == 300
    assert read_header(cfg.data_dir / "previous" / "vectors.faiss").rows == 500


def test_a_flipped_vector_byte_is_refused_and_restore_changes_nothing(cfg, tmp_path):
    add_rows(cfg, 300, tag="a")
    path = create(cfg, tmp_path / "backups")
    with open(path / "vectors.faiss", "r+b") as f:
        f.seek(HEADER_BYTES + 1000)
        byte = f.read(1)
        f.seek(HEADER_BYTES + 1000)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(BackupError, match=r"vectors\.faiss: checksum mismatch"):
        verify(path)
    before = snapshot(cfg.data_dir)
    with pytest.raises(BackupError, match=r"vectors\.faiss"):
        restore(cfg, path)
    assert snapshot(cfg.data_dir) == before


def test_a_truncated_database_is_refused_even_with_a_matching_checksum(cfg, tmp_path):
    add_rows(cfg, 3000, tag="a")
    path = create(cfg, tmp_path / "backups")
    db = path / "roxi.sqlite3"
    os.truncate(db, db.stat().st_size // 2)
    with pytest.raises(BackupError, match=r"roxi\.sqlite3"):
        verify(path)
    refresh_checksums(path)
    with pytest.raises(BackupError, match=r"roxi\.sqlite3") as caught:
        verify(path)
    assert "checksum" not in str(caught.value)  # caught by the database checks this time
    before = snapshot(cfg.data_dir)
    with pytest.raises(BackupError, match=r"roxi\.sqlite3"):
        restore(cfg, path)
    assert snapshot(cfg.data_dir) == before


def test_a_database_whose_rows_disagree_with_the_vectors_is_refused(cfg, tmp_path):
    add_rows(cfg, 100, tag="a")
    path = create(cfg, tmp_path / "backups")
    conn = sqlite3.connect(path / "roxi.sqlite3")
    conn.execute("UPDATE chunks SET row=NULL, state='pending' WHERE row=99")
    conn.commit()
    conn.close()
    refresh_checksums(path)
    with pytest.raises(BackupError, match=r"roxi\.sqlite3: inconsistent rows"):
        verify(path)


def tamper_vectors_short(path: Path) -> None:
    os.truncate(path / "vectors.faiss", (path / "vectors.faiss").stat().st_size - 2 * 256)


def tamper_db_wal(path: Path) -> None:
    conn = sqlite3.connect(path / "roxi.sqlite3")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


def tamper_db_index(path: Path) -> None:
    """An index that no longer matches its table: every query still works, integrity_check fails."""
    conn = sqlite3.connect(path / "roxi.sqlite3", isolation_level=None)
    conn.execute("PRAGMA writable_schema=ON")
    conn.execute("UPDATE sqlite_master SET sql='CREATE INDEX chunks_indexed_at ON chunks(position)' "
                 "WHERE name='chunks_indexed_at'")
    conn.close()


@pytest.mark.parametrize("tamper, message", [
    (tamper_vectors_short, r"vectors\.faiss: holds 99 rows"),
    (tamper_db_wal, r"roxi\.sqlite3: database is in WAL mode"),
    (tamper_db_index, r"roxi\.sqlite3: database is corrupt: .*chunks_indexed_at"),
])
def test_tampering_behind_a_matching_checksum_is_caught(cfg, tmp_path, tamper, message):
    add_rows(cfg, 100, tag="a")
    path = create(cfg, tmp_path / "backups")
    tamper(path)
    refresh_checksums(path)
    with pytest.raises(BackupError, match=message):
        verify(path)


@pytest.mark.parametrize("name", ["../roxi.sqlite3", "sub/vectors.faiss", "..", "/etc/passwd"])
def test_manifest_file_names_must_be_plain(cfg, tmp_path, name):
    add_rows(cfg, 10, tag="a")
    path = create(cfg, tmp_path / "backups")
    files = json.loads((path / "manifest.json").read_text())["files"]
    files[name] = files.pop("vectors.faiss")
    rewrite_manifest(path, files=files)
    with pytest.raises(BackupError, match="manifest.json.*not a plain file name"):
        verify(path)
    with pytest.raises(BackupError):
        restore(cfg, path)
    assert list_backups(tmp_path / "backups") == []  # listed only with a valid manifest


@pytest.mark.parametrize("name", ["roxi.sqlite3", "vectors.faiss"])
def test_a_backup_file_that_links_elsewhere_is_refused(cfg, tmp_path, name):
    add_rows(cfg, 10, tag="a")
    path = create(cfg, tmp_path / "backups")
    outside = tmp_path / "elsewhere"
    (path / name).rename(outside)  # same bytes, same checksum: only the link is wrong
    (path / name).symlink_to(outside)
    live = cfg.db_path.read_bytes()
    with pytest.raises(BackupError, match="symbolic link"):
        verify(path)
    with pytest.raises(BackupError, match="symbolic link"):
        restore(cfg, path)
    assert cfg.db_path.read_bytes() == live


@pytest.mark.parametrize("changes", [{"format_version": 2}, {"format_version": "1"}, {"rows": -1},
                                     {"kind": "weekly"}, {"extra": 1}, {"dim": "256"}])
def test_a_manifest_out_of_format_is_refused(cfg, tmp_path, changes):
    add_rows(cfg, 10, tag="a")
    path = create(cfg, tmp_path / "backups")
    rewrite_manifest(path, **changes)
    with pytest.raises(BackupError, match=r"manifest\.json"):
        verify(path)


def test_a_manifest_that_misses_a_file_is_refused(cfg, tmp_path):
    add_rows(cfg, 10, tag="a")
    path = create(cfg, tmp_path / "backups")
    files = json.loads((path / "manifest.json").read_text())["files"]
    del files["vectors.faiss"]
    rewrite_manifest(path, files=files)
    with pytest.raises(BackupError, match=r"manifest\.json: lists files"):
        verify(path)


def test_prune_keeps_the_newest_and_list_ignores_what_is_not_a_backup(cfg, tmp_path):
    add_rows(cfg, 10, tag="a")
    root = tmp_path / "backups"
    paths = [create(cfg, root, kind=kind) for kind in ("manual", "scheduled", "milestone", "manual")]
    (root / "20990101T000000.000000Z.partial").mkdir()
    (root / "junk").mkdir()
    (root / "bad").mkdir()
    (root / "bad" / "manifest.json").write_bytes(b"\xff\xfe not json")
    (root / "notes.txt").write_text("hello")
    assert [b.path for b in list_backups(root)] == paths
    with pytest.raises(BadInput):
        prune(root, keep=0)
    assert prune(root, keep=2) == paths[:2]
    assert [b.path for b in list_backups(root)] == paths[2:]
    assert (root / "junk").exists() and (root / "20990101T000000.000000Z.partial").exists()
    assert prune(root, keep=5) == []


def test_create_removes_stale_partials_and_leaves_none_on_failure(cfg, tmp_path):
    add_rows(cfg, 50, tag="a")
    root = tmp_path / "backups"
    stale, fresh = root / "20000101T000000.000000Z.partial", root / "20000101T000001.000000Z.partial"
    stale.mkdir(parents=True)
    fresh.mkdir()
    old = time.time() - 2 * backup.STALE_PARTIAL_SECONDS
    os.utime(stale, (old, old))
    create(cfg, root)
    assert not stale.exists() and fresh.exists()
    os.truncate(cfg.vectors_path, HEADER_BYTES + 10 * 2 * 256)  # rows the store committed are gone
    with pytest.raises(BackupError, match=r"vectors\.faiss: holds 10 rows .* but the store committed 50"):
        create(cfg, root)
    assert len(list_backups(root)) == 1 and list(root.glob("*.partial")) == [fresh]
    with pytest.raises(BadInput):
        create(cfg, root, kind="weekly")


def test_restore_refuses_while_the_data_dir_is_locked(cfg, tmp_path):
    add_rows(cfg, 50, tag="a")
    path = create(cfg, tmp_path / "backups")
    add_rows(cfg, 50, tag="b")
    lock = DataDirLock(cfg.lock_path)
    lock.acquire()
    try:
        before = snapshot(cfg.data_dir)
        with pytest.raises(AlreadyRunning):
            restore(cfg, path)
        assert snapshot(cfg.data_dir) == before
    finally:
        lock.release()
    restore(cfg, path)
    assert check_exactly_once(cfg) == 50


def test_an_empty_store_round_trips(cfg, make_config, tmp_path):
    cfg.data_dir.mkdir(parents=True)
    Store(cfg.db_path).close()  # no model, no rows, no vectors file
    path = create(cfg, tmp_path / "backups")
    manifest = verify(path)
    assert (manifest.model_id, manifest.dim, manifest.rows, manifest.chunks) == (None, None, 0, 0)
    assert set(manifest.files) == {"roxi.sqlite3"} and not (path / "vectors.faiss").exists()
    other = make_config(data_dir=tmp_path / "fresh")
    restore(other, path)
    with Store(other.db_path) as store:
        assert store.stats().chunks == 0 and store.model() is None
    # The header-only file the indexer would create under the configured model.
    header = read_header(other.vectors_path)
    assert (header.rows, header.dim) == (0, 256)
    with Store(other.db_path) as store, VectorWriter(other.vectors_path, dim=256,
                                                     model_id=make_embedder(other).model_id) as w:
        assert w.recover(store.committed_rows()) == 0


def test_a_store_with_a_model_but_no_vectors_yet_gets_an_empty_vectors_file(cfg, tmp_path):
    cfg.data_dir.mkdir(parents=True)
    model = make_embedder(cfg)
    with Store(cfg.db_path) as store:
        store.ensure_model(model.model_id, model.dim)
    path = create(cfg, tmp_path / "backups")
    manifest = verify(path)
    assert manifest.model_id == model.model_id and manifest.rows == 0
    assert (path / "vectors.faiss").stat().st_size == HEADER_BYTES
    restore(cfg, path)
    assert read_header(cfg.vectors_path).rows == 0
