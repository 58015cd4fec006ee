"""Unit tests of roxi_mp.extract.sniff: content types from bytes, and claims they contradict."""

from __future__ import annotations

import io
import zipfile

import pytest

from roxi_mp.extract import DOCX, HTML, MARKDOWN, PDF, TEXT, ExtractError
from roxi_mp.extract.sniff import HEAD_BYTES, binary_kind, resolve_type, sniff

PDF_BYTES = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"
PNG_BYTES = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)


def zip_bytes(names: list[str]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name in names:
            z.writestr(name, "<x>" + "filler " * 50 + "</x>")
    return out.getvalue()


DOCX_BYTES = zip_bytes(["[Content_Types].xml", "_rels/.rels", "word/document.xml"])
ZIP_BYTES = zip_bytes(["notes.txt", "data.csv"])


@pytest.mark.parametrize("data, expected", [
    (PDF_BYTES, PDF),
    (b"  \r\n" + PDF_BYTES, PDF),
    (b"garbage from a mail client\n" + PDF_BYTES, PDF),  # within the first 1024 bytes
    (b"x" * 1100 + PDF_BYTES, None),
    (DOCX_BYTES, DOCX),
    (ZIP_BYTES, None),
    (b"<!DOCTYPE html><html><body>x</body></html>", HTML),
    (b"\xef\xbb\xbf\n  <!doctype HTML>\n<title>t</title>", HTML),
    (b"<HTML lang=en>", HTML),
    (b"<head><title>t</title></head>", HTML),
    (b"<body>", HTML),
    (b"<!-- saved from url -->\n<!-- two -->\n<html>", HTML),
    (b'<?xml version="1.0"?>\n<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0//EN">', HTML),
    (b"<header>not a document head</header>", None),
    (b"<!-- a comment only -->\nplain words", None),
    (b"<p>a fragment</p>", None),
    (b"<html>\n<p>mentions %PDF-1.4 near the top</p>", HTML),
    (b"Gout is an inflammatory arthritis.\n", None),
    (b"", None),
    (PNG_BYTES, None),
])
def test_sniff(data: bytes, expected: str | None) -> None:
    assert sniff(data) == expected


@pytest.mark.parametrize("data, expected", [
    (PNG_BYTES, "PNG image"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG image"),
    (b"GIF89a\x01\x00", "GIF image"),
    (b"\x1f\x8b\x08\x00", "gzip archive"),
    (b"\x7fELF\x02\x01\x01", "ELF executable"),
    (ZIP_BYTES, "ZIP archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(8), "old Office (.doc/.xls) file"),
    (b"\xff\xfeG\x00o\x00u\x00t\x00", None),  # UTF-16 text: left to the UTF-8 decoder's message
    (b"plain text" + b"\x00" + b"more", "NUL bytes"),
    (b"x" * (HEAD_BYTES - 1) + b"\x00", "NUL bytes"),
    (b"x" * HEAD_BYTES + b"\x00", None),  # past the head: not looked at
    ("Ünïcödé text — fine".encode(), None),
    (b"", None),
])
def test_binary_kind(data: bytes, expected: str | None) -> None:
    assert binary_kind(data) == expected


@pytest.mark.parametrize("data, name, expected", [
    (PDF_BYTES, "guideline.pdf", PDF),
    (PDF_BYTES, "GUIDELINE.PDF", PDF),
    (DOCX_BYTES, "report.docx", DOCX),
    (b"<!doctype html><p>x", "page.html", HTML),
    (b"<!doctype html><p>x", "page.htm", HTML),
    (b"<p>a fragment, no html tag</p>", "frag.html", HTML),
    (b"plain words in an .html file", "plain.html", HTML),
    (b"Gout.\n", "notes.txt", TEXT),
    (b"# Gout\n", "notes.md", MARKDOWN),
    # HTML source named .txt is the text it is
    (b"<!doctype html><html><p>x</p></html>", "page-source.txt", TEXT),
    (b"<html><p>x</p></html>", "page.md", MARKDOWN),
    # a text that only mentions the PDF signature near its top stays text
    (b"The header of a PDF file is %PDF-1.7, then objects.\n", "about-pdf.txt", TEXT),
    # no claim (an unknown suffix, or none): the bytes say
    (PDF_BYTES, "download", PDF),
    (DOCX_BYTES, None, DOCX),
    (b"<html>", "x.bin", HTML),
    (b"just text", None, TEXT),
])
def test_resolve_type_accepts(data: bytes, name: str | None, expected: str) -> None:
    assert resolve_type(data, declared=None, name=name) == expected


@pytest.mark.parametrize("data, name, reason", [
    (b"<!doctype html><p>x", "guideline.pdf", "named .pdf but the content is HTML"),
    (DOCX_BYTES, "guideline.pdf", "named .pdf but the content is Word (.docx)"),
    (PNG_BYTES, "scan.pdf", "named .pdf but the content is binary (PNG image)"),
    (b"Gout is an inflammatory arthritis.\n", "notes.pdf", "named .pdf but the content is not PDF"),
    (PDF_BYTES, "page.html", "named .html but the content is PDF"),
    (PNG_BYTES, "page.htm", "named .htm but the content is binary (PNG image)"),
    (PDF_BYTES, "report.docx", "named .docx but the content is PDF"),
    (b"<html><body>x</body></html>", "report.docx", "named .docx but the content is HTML"),
    (b"plain words", "report.docx", "named .docx but the content is not Word (.docx)"),
    (ZIP_BYTES, "report.docx", "a ZIP archive, not a Word document"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(8), "old.docx",
     "named .docx but the content is binary (old Office (.doc/.xls) file)"),
    (PDF_BYTES, "notes.txt", "named .txt but the content is PDF"),
    (DOCX_BYTES, "notes.md", "named .md but the content is Word (.docx)"),
    (PNG_BYTES, "notes.txt", "binary content (PNG image), not text"),
    (b"text\x00with a NUL", "notes.txt", "binary content (NUL bytes), not text"),
    (ZIP_BYTES, "notes.txt", "binary content (ZIP archive), not text"),
    (PNG_BYTES, None, "binary content (PNG image), not text"),
    (ZIP_BYTES, None, "binary content (ZIP archive), not text"),
])
def test_resolve_type_refuses_with_one_line(data: bytes, name: str | None, reason: str) -> None:
    with pytest.raises(ExtractError) as info:
        resolve_type(data, declared=None, name=name)
    assert str(info.value) == reason
    assert "\n" not in str(info.value)


def test_a_docx_claim_on_the_head_of_a_large_archive_is_left_to_the_parser() -> None:
    # The head of an archive whose Word part comes later, without its central directory:
    # only the DOCX parser, reading the whole file, can tell.
    big = zip_bytes(["[Content_Types].xml", *(f"word/media/image{i}.bin" for i in range(200)),
                     "word/document.xml"])
    head = big[:HEAD_BYTES]
    assert b"word/document.xml" not in head
    assert resolve_type(head, declared=None, name="big.docx") == DOCX
    assert resolve_type(big, declared=None, name="big.docx") == DOCX


def test_a_declared_content_type_wins_over_the_name() -> None:
    assert resolve_type(PDF_BYTES, declared="application/pdf", name="x.txt") == PDF
    assert resolve_type(b"<html>", declared="Text/HTML; charset=utf-8", name=None) == HTML
    assert resolve_type(b"<html>", declared="text/plain", name=None) == TEXT
    with pytest.raises(ExtractError, match="^sent as application/pdf but the content is HTML$"):
        resolve_type(b"<html><body>", declared="application/pdf", name="x.pdf")
    with pytest.raises(ExtractError, match="^binary content \\(PNG image\\), not text$"):
        resolve_type(PNG_BYTES, declared="text/markdown", name=None)
    with pytest.raises(ExtractError, match="unknown content type 'image/png'"):
        resolve_type(PNG_BYTES, declared="image/png", name=None)
