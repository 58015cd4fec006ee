"""Unit tests of roxi_mp.ingest on real files and a real SQLite store."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path
from typing import Iterator

import pytest

from roxi_mp import ingest
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
    (root / "sub" / "report.pdf").write_bytes(b"%PDF-1.4 binary junk \xff\xfe")
    (root / "notes.rst").write_text("not ingested\n")
    (root / "sub" / "dir.md").mkdir()  # a directory with a .md name is not a file
    return root


def test_directory_tree_ingests_only_md_and_txt_recursively(store: Store, tree: Path) -> None:
    seen: list[tuple[str, str]] = []
    report = ingest_paths(store, [tree], **PARAMS, on_file=lambda p, o: seen.append((p.name, o)))
    assert (report.added, report.duplicates, report.empty, report.errors) == (4, 0, 0, [])
    assert report.files == 4
    assert sorted(seen) == [("a.md", "added"), ("b.txt", "added"), ("c.md", "added"), ("d.TXT", "added")]
    sources = sorted(Path(r[0]).name for r in store.conn.execute("SELECT source FROM documents"))
    assert sources == ["a.md", "b.txt", "c.md", "d.TXT"]
    stats = store.stats()
    assert stats.documents == 4 and stats.chunks == report.chunks == 4 and stats.pending == 4
    # Sources are stored as absolute paths.
    assert all(Path(r[0]).is_absolute() for r in store.conn.execute("SELECT source FROM documents"))


def test_reingest_identical_counts_duplicates_and_adds_nothing(store: Store, tree: Path) -> None:
    run(store, tree)
    before = snapshot(store)
    report = run(store, tree)
    assert (report.added, report.duplicates, report.chunks) == (0, 4, 0)
    assert snapshot(store) == before
    # The same content under another name is a duplicate too.
    copy = tree.parent / "copy.md"
    copy.write_bytes((tree / "a.md").read_bytes())
    assert run(store, copy).duplicates == 1
    assert snapshot(store) == before


def test_identical_files_in_one_batch_are_stored_once(store: Store, tmp_path: Path) -> None:
    (tmp_path / "one.md").write_text("same words here\n")
    (tmp_path / "two.md").write_text("same words here\n")
    report = run(store, tmp_path / "one.md", tmp_path / "two.md")
    assert (report.added, report.duplicates) == (1, 1)
    assert store.stats().documents == 1


def test_expand_reports_missing_and_unsupported_paths(tmp_path: Path) -> None:
    (tmp_path / "ok.md").write_text("x\n")
    (tmp_path / "doc.pdf").write_bytes(b"%PDF")
    (tmp_path / "noext").write_text("x\n")
    report = IngestReport()
    files = expand([tmp_path / "missing.md", tmp_path / "doc.pdf", tmp_path / "noext", tmp_path / "ok.md"],
                   report)
    assert files == [tmp_path / "ok.md"]
    reasons = dict(report.errors)
    assert set(reasons) == {str(tmp_path / "missing.md"), str(tmp_path / "doc.pdf"), str(tmp_path / "noext")}
    assert "no such file" in reasons[str(tmp_path / "missing.md")]
    assert ".pdf" in reasons[str(tmp_path / "doc.pdf")]
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
    (bad / "doc.pdf").write_bytes(b"%PDF")
    missing = tmp_path / "gone.md"
    outcomes: dict[str, str] = {}
    report = ingest_paths(store, [bad, bad / "doc.pdf", missing], **PARAMS,
                          on_file=lambda p, o: outcomes.update({p.name: o}))
    assert outcomes == {"latin.md": "error", "late.txt": "error", "empty.md": "empty", "blank.txt": "empty"}
    assert (report.added, report.duplicates, report.empty, report.chunks) == (0, 0, 2, 0)
    errors = dict(report.errors)
    assert set(errors) == {str(bad / "latin.md"), str(bad / "late.txt"), str(bad / "doc.pdf"), str(missing)}
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
    assert ingest_file(store, path, report, **PARAMS) == "duplicate"
    assert report.as_dict() == {"files": 2, "added": 1, "duplicates": 1, "empty": 0, "chunks": 1, "errors": []}
    assert store.stats() == Stats(documents=1, chunks=1, pending=1, leased=0, indexed=0, failed=0,
                                  committed_rows=0)


def test_sample_corpus_ingests(store: Store) -> None:
    assert ingest.is_empty_store(store)
    report = run(store, ingest.sample_corpus_dir())
    assert report.added == len(list(ingest.sample_corpus_dir().glob("*.md"))) >= 20
    assert report.errors == [] and not ingest.is_empty_store(store)
