"""Unit tests of ingest's PDF/HTML/Word path with an in-memory extractor: what is stored,
what is refused (with its one line, the store unchanged), and one Extractor per ingest."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from roxi_mp import ingest
from roxi_mp.config import ExtractSettings
from roxi_mp.extract import DOCX, HTML, PDF, Extracted, ExtractError, Section
from roxi_mp.ingest import ingest_paths
from roxi_mp.store import Store

PARAMS = dict(chunk_words=50, chunk_overlap=10, max_document_bytes=1 << 20)
PDF_BYTES = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + b"0" * 100
HTML_BYTES = b"<!doctype html><html><head><title>t</title></head><body><p>x</p></body></html>"
DOCX_BYTES = b"PK\x03\x04" + b"\x00" * 26 + b"word/document.xml" + b"\x00" * 50


class FakeExtractor:
    """Answers by content type from a table; a table entry that is an exception is raised."""

    def __init__(self, answers: dict[str, Extracted | ExtractError]) -> None:
        self.answers = answers
        self.calls: list[tuple[bytes, str]] = []
        self.closed = 0

    def extract(self, data: bytes, content_type: str) -> Extracted:
        self.calls.append((data, content_type))
        answer = self.answers[content_type]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        self.closed += 1


def paged(title: str | None = "Gout guideline") -> Extracted:
    return Extracted(PDF, title, [Section("Urate lowering therapy lowers serum urate.", page=1),
                                  Section("Colchicine treats the acute flare.", page=3)], pages=3)


def headed() -> Extracted:
    return Extracted(HTML, None, [Section("Lupus", heading="Lupus", kind="heading"),
                                  Section("Hydroxychloroquine for every patient.", heading="Lupus")])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "roxi.sqlite3")
    yield s
    s.close()


def snapshot(store: Store) -> tuple:
    docs = store.conn.execute("SELECT id, key, content_hash, title, n_chunks FROM documents ORDER BY id").fetchall()
    chunks = store.conn.execute("SELECT id, doc_id, text, page, heading FROM chunks ORDER BY id").fetchall()
    return docs, chunks


def test_extracted_documents_are_stored_with_their_type_title_pages_and_headings(store, tmp_path) -> None:
    (tmp_path / "gout.pdf").write_bytes(PDF_BYTES)
    (tmp_path / "lupus.html").write_bytes(HTML_BYTES)
    fake = FakeExtractor({PDF: paged(), HTML: headed()})
    report = ingest_paths(store, [tmp_path], **PARAMS, extractor=fake)
    assert (report.added, report.errors) == (2, [])
    assert [c[1] for c in fake.calls] == [PDF, HTML] and fake.calls[0][0] == PDF_BYTES
    rows = dict((Path(k).name, (t, ct)) for k, t, ct in
                store.conn.execute("SELECT key, title, content_type FROM documents"))
    # the document's own title, else the file name
    assert rows == {"gout.pdf": ("Gout guideline", PDF), "lupus.html": ("lupus.html", HTML)}
    located = store.conn.execute("SELECT text, page, heading FROM chunks ORDER BY id").fetchall()
    assert [(page, heading) for _, page, heading in located] == [(1, None), (None, "Lupus")]
    assert "Colchicine" in located[0][0]


def test_an_unchanged_file_costs_no_extraction(store, tmp_path) -> None:
    (tmp_path / "gout.pdf").write_bytes(PDF_BYTES)
    fake = FakeExtractor({PDF: paged()})
    ingest_paths(store, [tmp_path], **PARAMS, extractor=fake)
    before = snapshot(store)
    again = ingest_paths(store, [tmp_path], **PARAMS, extractor=fake)
    assert (again.unchanged, again.added, len(fake.calls)) == (1, 0, 1)
    assert snapshot(store) == before
    (tmp_path / "gout.pdf").write_bytes(PDF_BYTES + b"changed")
    assert ingest_paths(store, [tmp_path], **PARAMS, extractor=fake).replaced == 1
    assert len(fake.calls) == 2


def test_every_failure_is_one_line_for_its_file_and_the_batch_goes_on(store, tmp_path) -> None:
    good, docs = tmp_path / "good", tmp_path / "docs"
    good.mkdir()
    docs.mkdir()
    (good / "ok.pdf").write_bytes(PDF_BYTES)
    fake = FakeExtractor({PDF: paged(), HTML: ExtractError("took over 1 s (extract.timeout_seconds)"),
                          DOCX: ExtractError("a zip bomb: 10000 MB unpacked, over extract.max_unzipped_bytes")})
    ingest_paths(store, [good], **PARAMS, extractor=fake)
    before = snapshot(store)
    # the stored document's file now fails: its stored version stays as it was
    (good / "ok.pdf").write_bytes(HTML_BYTES.replace(b"<p>x", b"<p>y"))
    (docs / "slow.html").write_bytes(HTML_BYTES)
    (docs / "bomb.docx").write_bytes(DOCX_BYTES)
    (docs / "lying.pdf").write_bytes(HTML_BYTES)
    (docs / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (docs / "nul.md").write_bytes(b"text\x00more")
    (docs / "real.md").write_text("# Gout\n\nAllopurinol lowers urate.\n")
    report = ingest_paths(store, [good, docs], **PARAMS, extractor=fake)
    assert dict(report.errors) == {
        str(good / "ok.pdf"): "named .pdf but the content is HTML",
        str(docs / "slow.html"): "took over 1 s (extract.timeout_seconds)",
        str(docs / "bomb.docx"): "a zip bomb: 10000 MB unpacked, over extract.max_unzipped_bytes",
        str(docs / "lying.pdf"): "named .pdf but the content is HTML",
        str(docs / "image.txt"): "binary content (PNG image), not text",
        str(docs / "nul.md"): "binary content (NUL bytes), not text",
    }
    assert report.added == 1  # real.md
    docs_now, chunks_now = snapshot(store)
    assert docs_now[:len(before[0])] == before[0] and chunks_now[:len(before[1])] == before[1]
    assert [Path(d[1]).name for d in docs_now] == ["ok.pdf", "real.md"]
    # lying and binary files never reached the extractor
    assert sorted(c[1] for c in fake.calls[1:]) == [DOCX, HTML]


def test_files_over_the_limit_are_refused_before_they_are_read(store, tmp_path) -> None:
    (tmp_path / "big.pdf").write_bytes(PDF_BYTES + b"0" * 2000)
    fake = FakeExtractor({PDF: paged()})
    report = ingest_paths(store, [tmp_path], **PARAMS, extractor=fake, extract=ExtractSettings(max_file_bytes=1024))
    [(path, reason)] = report.errors
    assert reason == f"{len(PDF_BYTES) + 2000} bytes exceeds extract.max_file_bytes (1024)"
    assert fake.calls == [] and store.stats().documents == 0


def test_a_long_title_is_one_line_and_cut(store, tmp_path) -> None:
    (tmp_path / "gout.pdf").write_bytes(PDF_BYTES)
    ingest_paths(store, [tmp_path], **PARAMS, extractor=FakeExtractor({PDF: paged("A\n  title " + "x" * 300)}))
    [(title,)] = store.conn.execute("SELECT title FROM documents").fetchall()
    assert title.startswith("A title xxx") and len(title) == ingest.TITLE_CHARS


def test_one_extractor_per_ingest_closed_at_the_end(store, tmp_path, monkeypatch) -> None:
    made: list[FakeExtractor] = []

    def make(settings: ExtractSettings) -> FakeExtractor:
        assert settings.timeout_seconds == 7.0
        made.append(FakeExtractor({PDF: paged(), HTML: headed()}))
        return made[-1]

    monkeypatch.setattr(ingest, "Extractor", make)
    for name in ("a.pdf", "b.pdf", "c.pdf"):
        (tmp_path / name).write_bytes(PDF_BYTES + name.encode())
    (tmp_path / "d.htm").write_bytes(HTML_BYTES)
    report = ingest_paths(store, [tmp_path], **PARAMS, extract=ExtractSettings(timeout_seconds=7.0))
    assert report.added == 4
    assert len(made) == 1 and len(made[0].calls) == 4 and made[0].closed == 1
    # a batch of text files starts no extractor at all
    (tmp_path / "t.md").write_text("words\n")
    ingest_paths(store, [tmp_path / "t.md"], **PARAMS)
    assert len(made) == 1


def test_the_extractor_is_closed_when_the_ingest_fails(store, tmp_path, monkeypatch) -> None:
    fake = FakeExtractor({PDF: RuntimeError("the store broke")})
    monkeypatch.setattr(ingest, "Extractor", lambda settings: fake)
    (tmp_path / "a.pdf").write_bytes(PDF_BYTES)
    with pytest.raises(RuntimeError):
        ingest_paths(store, [tmp_path], **PARAMS)
    assert fake.closed == 1
