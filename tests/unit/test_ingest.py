"""Unit tests of roxi_mp.ingest on real files and a real SQLite store."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path
from typing import Iterator

import pytest

from roxi_mp import ingest
from roxi_mp.errors import BadInput
from roxi_mp.ingest import IngestReport, expand, ingest_file, ingest_paths
from roxi_mp.store import Stats, Store

PARAMS = dict(chunk_words=50, chunk_overlap=10, max_document_bytes=1 << 20)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "roxi.sqlite3")
    yield s
    s.close()


def run(store: Store, *paths, **overrides) -> IngestReport:
    return ingest_paths(store, list(paths), **{**PARAMS, **overrides})


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(store: Store) -> tuple:
    docs = store.conn.execute("SELECT id, content_hash, title, n_chunks FROM documents ORDER BY id").fetchall()
    chunks = store.conn.execute("SELECT id, doc_id, position, text FROM chunks ORDER BY id").fetchall()
    return docs, chunks


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.md").write_text("# Alpha heading\n\nAlpha body text about gout and joints.\n")
    (root / "b.txt").write_text("Beta plain text first line\nsecond line of beta.\n")
    (root / "sub" / "c.md").write_text("## Gamma\nGamma text.\n")
    (root / "sub" / "deeper" / "d.TXT").write_text("Delta upper-case suffix.\n")
    (root / "sub" / "report.odt").write_bytes(b"PK\x03\x04 binary junk \xff\xfe")  # a suffix not walked
    (root / "notes.rst").write_text("not ingested\n")
    (root / "sub" / "dir.md").mkdir()  # a directory with a .md name is not a file
    return root


def test_directory_tree_ingests_only_md_and_txt_recursively(store: Store, tree: Path) -> None:
    seen: list[tuple[str, str]] = []
    report = ingest_paths(store, [tree], **PARAMS, on_file=lambda p, o: seen.append((p.name, o)))
    assert (report.added, report.unchanged, report.empty, report.errors) == (4, 0, 0, [])
    assert report.files == 4
    assert sorted(seen) == [("a.md", "added"), ("b.txt", "added"), ("c.md", "added"), ("d.TXT", "added")]
    sources = sorted(Path(r[0]).name for r in store.conn.execute("SELECT source FROM documents"))
    assert sources == ["a.md", "b.txt", "c.md", "d.TXT"]
    stats = store.stats()
    assert stats.documents == 4 and stats.chunks == report.chunks == 4 and stats.pending == 4
    # Sources are stored as absolute paths.
    assert all(Path(r[0]).is_absolute() for r in store.conn.execute("SELECT source FROM documents"))


def test_reingest_identical_counts_unchanged_and_adds_nothing(store: Store, tree: Path, monkeypatch) -> None:
    run(store, tree)
    before = snapshot(store)
    chunked: list[Path] = []
    real = ingest._chunk_stream
    monkeypatch.setattr(ingest, "_chunk_stream", lambda path, *a: chunked.append(path) or real(path, *a))
    report = run(store, tree)
    assert (report.added, report.replaced, report.unchanged, report.chunks) == (0, 0, 4, 0)
    assert chunked == []  # skipped on the hash, before any chunking
    assert snapshot(store) == before
    # The same content under another existing name is a document of its own.
    copy = tree.parent / "copy.md"
    copy.write_bytes((tree / "a.md").read_bytes())
    again = run(store, copy)
    assert (again.added, again.unchanged, again.removed) == (1, 0, [])
    assert sorted(store.live_keys_with_hash(sha(copy))) == sorted([str(copy.resolve()),
                                                                   str((tree / "a.md").resolve())])


def test_identical_files_in_one_batch_are_two_documents(store: Store, tmp_path: Path) -> None:
    (tmp_path / "one.md").write_text("same words here\n")
    (tmp_path / "two.md").write_text("same words here\n")
    report = run(store, tmp_path / "one.md", tmp_path / "two.md")
    assert (report.added, report.unchanged) == (2, 0)
    assert store.stats().documents == 2


def test_expand_reports_missing_and_unsupported_paths(tmp_path: Path) -> None:
    (tmp_path / "ok.md").write_text("x\n")
    (tmp_path / "doc.exe").write_bytes(b"MZ")
    (tmp_path / "noext").write_text("x\n")
    report = IngestReport()
    files = expand([tmp_path / "missing.md", tmp_path / "doc.exe", tmp_path / "noext", tmp_path / "ok.md"],
                   report)
    assert files == [tmp_path / "ok.md"]
    reasons = dict(report.errors)
    assert set(reasons) == {str(tmp_path / "missing.md"), str(tmp_path / "doc.exe"), str(tmp_path / "noext")}
    assert "no such file" in reasons[str(tmp_path / "missing.md")]
    assert ".exe" in reasons[str(tmp_path / "doc.exe")]
    assert "(none)" in reasons[str(tmp_path / "noext")]


def test_bad_files_are_reported_and_the_store_keeps_previous_data(store: Store, tree: Path,
                                                                  tmp_path: Path) -> None:
    run(store, tree)
    before = snapshot(store)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "latin.md").write_bytes(b"\xff\xfe\x00bad")
    # Invalid UTF-8 far into a file: the first chunks were already streamed to SQLite.
    (bad / "late.txt").write_bytes(("valid words here. " * 5000).encode() + b"\xc3\x28 tail\n")
    (bad / "empty.md").write_bytes(b"")
    (bad / "blank.txt").write_text("  \n\n\t \n   \n")
    (bad / "doc.exe").write_bytes(b"MZ")
    missing = tmp_path / "gone.md"
    outcomes: dict[str, str] = {}
    report = ingest_paths(store, [bad, bad / "doc.exe", missing], **PARAMS,
                          on_file=lambda p, o: outcomes.update({p.name: o}))
    assert outcomes == {"latin.md": "error", "late.txt": "error", "empty.md": "empty", "blank.txt": "empty"}
    assert (report.added, report.unchanged, report.empty, report.chunks) == (0, 0, 2, 0)
    errors = dict(report.errors)
    assert set(errors) == {str(bad / "latin.md"), str(bad / "late.txt"), str(bad / "doc.exe"), str(missing)}
    assert "UTF-8" in errors[str(bad / "latin.md")] and "UTF-8" in errors[str(bad / "late.txt")]
    assert report.files == 6
    assert snapshot(store) == before
    assert not store.conn.in_transaction
    assert report.as_dict()["errors"][0].keys() == {"path", "reason"}


def test_non_utf8_error_names_the_byte_offset_in_the_file(store: Store, tmp_path: Path) -> None:
    prefix = ("valid words here. " * 5000).encode()
    path = tmp_path / "late.txt"
    path.write_bytes(prefix + b"\xc3\x28 tail\n")
    report = run(store, path)
    assert report.errors == [(str(path), f"not valid UTF-8 (byte {len(prefix)})")]


def test_file_larger_than_max_document_bytes_is_refused(store: Store, tmp_path: Path) -> None:
    big = tmp_path / "big.md"
    big.write_text("word " * 400)  # 2000 bytes
    report = run(store, big, max_document_bytes=1999)
    assert report.added == 0 and len(report.errors) == 1
    assert "2000 bytes" in report.errors[0][1] and "max_document_bytes" in report.errors[0][1]
    assert store.stats().documents == 0
    assert run(store, big, max_document_bytes=2000).added == 1  # exactly at the limit is fine


LINE = ("Methotrexate is an anchor drug in rheumatoid arthritis and it needs monitoring. " * 6) + "\n"


def write_big(path: Path, size: int) -> int:
    with open(path, "w") as fh:
        written = 0
        while written < size:
            fh.write(LINE)
            written += len(LINE)
    return path.stat().st_size


def test_large_file_is_chunked_into_many_ordered_chunks(store: Store, tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    size = write_big(big, 5_000_000)
    report = ingest_paths(store, [big], chunk_words=200, chunk_overlap=40, max_document_bytes=64 << 20)
    assert report.added == 1 and report.errors == []
    n = store.conn.execute("SELECT n_chunks FROM documents").fetchone()[0]
    assert n == report.chunks > 4000  # ~790k words at 160 new words per chunk
    positions = [r[0] for r in store.conn.execute("SELECT position FROM chunks ORDER BY id")]
    assert positions == list(range(n))
    assert store.conn.execute("SELECT bytes FROM documents").fetchone()[0] == size
    assert store.has_document(hashlib.sha256(big.read_bytes()).hexdigest())
    first = store.conn.execute("SELECT text FROM chunks WHERE position=0").fetchone()[0]
    assert first.startswith("Methotrexate is an anchor drug") and len(first.split()) <= 200


def test_large_file_is_streamed_not_loaded_whole(store: Store, tmp_path: Path, monkeypatch) -> None:
    # Smaller hash reads than the 1 MiB default, so the measured peak is the chunk stream's.
    monkeypatch.setattr(ingest, "READ_BYTES", 1 << 16)
    monkeypatch.setattr(ingest, "CHUNK_FIRST_BYTES", 1 << 20)  # smaller files are chunked in memory
    big = tmp_path / "big.txt"
    size = write_big(big, 2_500_000)
    tracemalloc.start()
    try:
        report = ingest_paths(store, [big], chunk_words=200, chunk_overlap=40, max_document_bytes=64 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.added == 1 and report.chunks > 2000
    # A whole-file read would need at least `size` bytes (more as a str plus its word list);
    # streaming needs about one insert batch of chunk texts.
    assert peak < size / 2, f"peak {peak} bytes for a {size}-byte file"


@pytest.mark.parametrize("text, title", [
    ("# Gout Overview\n\nGout is an arthritis.\n", "Gout Overview"),
    ("\n\n   \n## Second-level heading  \nbody\n", "Second-level heading"),
    ("Plain first line\nmore\n", "Plain first line"),
])
def test_title_from_first_heading_or_line(store: Store, tmp_path: Path, text: str, title: str) -> None:
    path = tmp_path / "doc.md"
    path.write_text(text)
    assert run(store, path).added == 1
    assert store.conn.execute("SELECT title FROM documents").fetchone()[0] == title


def test_title_falls_back_to_file_stem_and_is_truncated(tmp_path: Path) -> None:
    only_hashes = tmp_path / "fallback-name.md"
    only_hashes.write_text("#\n##\n")
    assert ingest._title(only_hashes) == "fallback-name"
    long = tmp_path / "long.md"
    long.write_text("# " + "x" * 500 + "\n")
    assert ingest._title(long) == "x" * 200


def test_ingest_file_returns_outcomes(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "one.md"
    path.write_text("one two three four five\n")
    report = IngestReport()
    assert ingest_file(store, path, report, **PARAMS) == "added"
    assert ingest_file(store, path, report, **PARAMS) == "unchanged"
    assert report.as_dict() == {"files": 2, "added": 1, "replaced": 0, "unchanged": 1, "empty": 0, "chunks": 1,
                                "reused": 0, "removed": 0, "removed_keys": [], "errors": []}
    assert store.stats() == Stats(documents=1, chunks=1, pending=1, leased=0, indexed=0, failed=0,
                                  committed_rows=0)


def test_sample_corpus_ingests(store: Store) -> None:
    assert ingest.is_empty_store(store)
    report = run(store, ingest.sample_corpus_dir())
    files = [p for p in ingest.sample_corpus_dir().iterdir() if p.suffix in ingest.SUFFIXES]
    assert report.added == len(files) >= 20
    assert {p.suffix for p in files} >= {".md", ".pdf", ".html"}  # issue 18: a PDF and an HTML page too
    assert report.errors == [] and not ingest.is_empty_store(store)


# --- documents that change: replace, rename, sync, --key ------------------------------
def index_all(store: Store) -> int:
    """Commit a row for every chunk without one (as the indexer would); returns how many."""
    ids = [r[0] for r in store.conn.execute(
        "SELECT id FROM chunks WHERE row IS NULL AND state IN ('pending', 'copy') ORDER BY id")]
    start = store.committed_rows()
    store.commit_rows(list(zip(ids, range(start, start + len(ids)))), rows=start + len(ids))
    return len(ids)


def versions(store: Store, key: str) -> dict[str, int]:
    """{status: version} of a key's versions that are not dead."""
    return {s: v for s, v in store.conn.execute(
        "SELECT status, version FROM documents WHERE key=? AND status != 'dead'", (key,))}


def paragraphs(*names: str) -> str:
    return "\n\n".join(f"# {n}\n\n" + " ".join(f"{n}-word{i}." for i in range(45)) for n in names) + "\n"


def test_changed_file_replaces_its_version_reusing_indexed_chunks(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "guideline.md"
    path.write_text(paragraphs("alpha", "beta", "gamma"))
    key = str(path.resolve())
    assert run(store, path).added == 1
    index_all(store)
    v1_hashes = {r[0] for r in store.conn.execute("SELECT hash FROM chunks")}
    path.write_text(paragraphs("alpha", "beta", "delta"))  # the last section revised
    outcomes: list[str] = []
    report = ingest_paths(store, [path], **PARAMS, on_file=lambda p, o: outcomes.append(o))
    assert outcomes == ["replaced"] and (report.added, report.replaced, report.unchanged) == (0, 1, 0)
    assert versions(store, key) == {"live": 1, "pending": 2}  # v1 answers until v2 is indexed
    v2 = store.conn.execute("SELECT c.hash, c.state FROM chunks c JOIN documents d ON d.id = c.doc_id "
                            "WHERE d.key=? AND d.version=2", (key,)).fetchall()
    assert report.chunks == len(v2) and report.reused == sum(h in v1_hashes for h, _ in v2) >= 1
    assert {state for h, state in v2 if h in v1_hashes} == {"copy"}
    assert {state for h, state in v2 if h not in v1_hashes} == {"pending"}
    assert store.stats().replacing == 1
    index_all(store)
    assert versions(store, key) == {"live": 2}
    assert run(store, path).unchanged == 1


def test_renamed_file_leaves_no_copy_under_its_old_key(store: Store, tmp_path: Path) -> None:
    old = tmp_path / "old-name.md"
    old.write_text(paragraphs("renamed"))
    run(store, old)
    index_all(store)
    new = tmp_path / "new-name.md"
    old.rename(new)
    report = run(store, new)
    assert (report.added, report.removed) == (1, [str(old.resolve())])
    assert store.keys_with_prefix(str(tmp_path.resolve()) + os.sep) == [str(new.resolve())]
    assert store.conn.execute("SELECT count(*) FROM chunks WHERE state='copy'").fetchone()[0] >= 1
    # A key a client chose that looks like a path is not a file's: kept.
    store.put_document(key="/no/such/dir/client.md", content_hash=sha(new), source="put", title="t",
                       size=1, chunks=[])
    new.rename(tmp_path / "third.md")
    assert run(store, tmp_path / "third.md").removed == [str(new.resolve())]
    assert store.newest_version("/no/such/dir/client.md") is not None


def test_sync_deletes_documents_of_vanished_files_under_the_directory(store: Store, tree: Path,
                                                                      tmp_path: Path) -> None:
    outside = tmp_path / "outside.md"
    outside.write_text("kept: not under the synced directory\n")
    run(store, tree, outside)
    client_key = str(tree.resolve() / "from-a-client")  # under the directory, but no file's
    store.put_document(key=client_key, content_hash="c", source="put", title="t", size=1, chunks=[])
    (tree / "b.txt").unlink()
    outside.unlink()
    assert run(store, tree).removed == []  # without --sync nothing is deleted
    report = run(store, tree, sync=True)
    assert report.removed == [str((tree / "b.txt").resolve())]
    assert report.unchanged == 3
    keys = store.keys_with_prefix(str(tree.resolve()) + os.sep)
    assert sorted(Path(k).name for k in keys) == ["a.md", "c.md", "d.TXT", "from-a-client"]
    assert store.newest_version(str(outside.resolve())) is not None
    assert store.newest_version(client_key) is not None
    with pytest.raises(BadInput, match="--sync applies to directory arguments"):
        run(store, tree / "a.md", sync=True)


def test_key_names_one_files_document(store: Store, tree: Path) -> None:
    report = run(store, tree / "a.md", key="guidelines/gout")
    assert report.added == 1
    assert store.document("guidelines/gout")["live"]["source"] == str((tree / "a.md").resolve())
    assert store.newest_version(str((tree / "a.md").resolve())) is None
    (tree / "a.md").write_text("# Gout, revised\n\nNew advice.\n")
    assert run(store, tree / "a.md", key="guidelines/gout").replaced == 1
    for paths in ([tree / "a.md", tree / "b.txt"], [tree]):
        with pytest.raises(BadInput, match="exactly one file"):
            run(store, *paths, key="k")
    with pytest.raises(BadInput, match="max_key_chars"):
        run(store, tree / "a.md", key="k" * 2000, max_key_chars=1024)
    with pytest.raises(BadInput, match="empty"):
        run(store, tree / "a.md", key=" ")


def test_a_file_emptied_stops_its_old_text_answering(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "withdrawn.md"
    path.write_text("A recommendation that was withdrawn.\n")
    run(store, path)
    index_all(store)
    path.write_text("\n")
    report = run(store, path)
    assert (report.replaced, report.empty) == (1, 0)
    live = store.document(str(path.resolve()))["live"]
    assert live["version"] == 2 and live["chunks"] == 0  # nothing to index: live at once
    assert store.dead_rows() == 1
    assert run(store, path).unchanged == 1
