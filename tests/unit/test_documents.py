"""roxi_mp.documents: the checks of a put's fields, content types, titles and chunk rows."""

from __future__ import annotations

import hashlib
import math

import pytest

from roxi_mp import documents
from roxi_mp.chunking import iter_chunks_from_lines
from roxi_mp.config_sections import DocumentsSettings
from roxi_mp.documents import TooLarge, prepare
from roxi_mp.errors import E_BAD_REQUEST, E_TOO_LARGE, BadInput
from roxi_mp.extract import DOCX, HTML, MARKDOWN, PDF, TEXT, Extracted, Section

LIMITS = DocumentsSettings(max_document_bytes=1000, max_key_chars=20, max_title_chars=30,
                           max_metadata_bytes=200, max_metadata_entries=4, list_max=10)
WORDS, OVERLAP = 8, 2


def put(key="doc", content="# Gout\n\nUrate crystals in the big toe.\n", **fields):
    return prepare(key, content, limits=LIMITS, chunk_words=WORDS, chunk_overlap=OVERLAP, **fields)


def test_a_text_put_is_chunked_hashed_and_titled():
    text = "# Gout\n\n" + " ".join(f"w{i}." for i in range(30)) + "\n"
    up = put(content=text, metadata={"year": 2024, "score": 0.5, "ok": True, "none": None})
    assert up.key == "doc" and up.title == "Gout" and up.content_type == "text/plain"
    assert up.content_hash == hashlib.sha256(text.encode()).hexdigest() and up.size == len(text.encode())
    expected = [c.text for c in iter_chunks_from_lines(text.split("\n"), size=WORDS, overlap=OVERLAP)]
    assert [t for _, t, *_ in up.chunks] == expected and len(expected) > 3
    assert [p for p, *_ in up.chunks] == list(range(len(expected)))
    assert all(h == hashlib.sha256(t.encode()).hexdigest() for _, t, h, *_ in up.chunks)
    assert up.metadata["year"] == 2024
    fields = up.store_fields()
    assert fields["source"] == documents.SOURCE and fields["size"] == up.size


def test_bytes_and_markdown_with_a_charset():
    up = put(content="# Lupus\nrash and nephritis\n".encode(), content_type="text/markdown; charset=UTF-8")
    assert up.content_type == "text/markdown" and up.title == "Lupus"


def test_line_ends_chunk_as_a_text_file_read_does():
    unix = put(content="alpha beta.\n\n- gamma\n- delta\n")
    windows = put(content="alpha beta.\r\n\r\n- gamma\r\n- delta\r\n")
    assert [t for _, t, *_ in unix.chunks] == [t for _, t, *_ in windows.chunks]
    assert unix.content_hash != windows.content_hash  # the hash is of the bytes, as ingest's


def test_title_defaults_to_the_first_line_else_the_key_and_a_given_one_wins():
    assert put(content="\n\n   \nFirst real line\nsecond\n").title == "First real line"
    assert put(content="x " * 10, title="  Given  ").title == "Given"
    assert put(content="words here", title="   ").title == "words here"  # blank: made from the text
    long_line = "y" * 500
    assert put(content=long_line).title == "y" * 30  # clipped to max_title_chars
    assert documents.default_title("", fallback="the-key") == "the-key"
    assert documents.default_title("\n".join([""] * 60 + ["late"]), fallback="k") == "k"  # first 50 lines only


# --- bad input: one test each -----------------------------------------------------------------
@pytest.mark.parametrize("key, needle", [
    ("", "empty"),
    ("k" * 21, "max_key_chars"),
    (17, "string"),
    (None, "string"),
    (b"bytes", "string"),
    ("a\x00b", r"U\+0000"),
    ("line\nbreak", r"U\+000A"),
    ("tab\there", r"U\+0009"),
    ("del\x7f", r"U\+007F"),
    ("c1\x85", r"U\+0085"),
])
def test_bad_keys_are_bad_requests(key, needle):
    with pytest.raises(BadInput, match=needle) as caught:
        put(key=key)
    assert caught.value.code == E_BAD_REQUEST


def test_a_key_at_the_limit_with_unicode_is_fine():
    assert put(key="é" * 20).key == "é" * 20


def test_content_over_the_limit_is_too_large_before_anything_is_decoded():
    with pytest.raises(TooLarge, match="max_document_bytes") as caught:
        put(content=b"\xff" * 1001)  # invalid UTF-8 too, but the size is told first
    assert caught.value.code == E_TOO_LARGE
    with pytest.raises(TooLarge):
        put(content="é" * 501)  # 1002 bytes in UTF-8, 501 characters
    assert put(content="a " * 500).size == 1000


def test_invalid_utf8_names_the_byte_offset():
    with pytest.raises(BadInput, match=r"not valid UTF-8 \(byte 6") as caught:
        put(content=b"hello \xc3\x28 world")
    assert caught.value.code == E_BAD_REQUEST


def test_unknown_content_type_lists_the_known_ones():
    with pytest.raises(BadInput, match="text/plain, text/markdown, application/pdf, text/html") as caught:
        put(content=b"\x89PNG\r\n\x1a\n....", content_type="image/png")
    assert caught.value.code == E_BAD_REQUEST
    with pytest.raises(BadInput, match="content_type must be a string"):
        put(content_type=7)
    with pytest.raises(BadInput, match="UTF-8 only"):
        put(content=b"abc", content_type="text/plain; charset=latin-1")


def test_content_of_the_wrong_type_or_missing():
    with pytest.raises(BadInput, match="string or bytes"):
        put(content=["a list"])
    with pytest.raises(BadInput, match="needs 'content'"):
        put(content=None)
    with pytest.raises(BadInput, match="not valid Unicode"):
        put(content="lone \ud800 surrogate")


@pytest.mark.parametrize("content", ["", "   \n\t\n", b"", b"\n\n"])
def test_empty_text_is_a_bad_request(content):
    with pytest.raises(BadInput, match="no text"):
        put(content=content)


@pytest.mark.parametrize("metadata, needle", [
    ("a string", "must be a map"),
    ([("a", 1)], "must be a map"),
    ({"nested": {"a": 1}}, "flat map"),
    ({"list": [1, 2]}, "flat map"),
    ({"raw": b"bytes"}, "flat map"),
    ({1: "int key"}, "keys must be strings"),
    ({"nan": math.nan}, "finite"),
    ({"inf": math.inf}, "finite"),
])
def test_metadata_that_is_not_a_flat_map_of_scalars(metadata, needle):
    with pytest.raises(BadInput, match=needle) as caught:
        put(metadata=metadata)
    assert caught.value.code == E_BAD_REQUEST


def test_metadata_too_large_in_entries_or_bytes():
    with pytest.raises(BadInput, match="max_metadata_entries"):
        put(metadata={f"k{i}": i for i in range(5)})
    with pytest.raises(BadInput, match="max_metadata_bytes"):
        put(metadata={"note": "x" * 200})
    assert put(metadata={}).metadata is None  # empty: stored as none


def test_a_bad_title():
    with pytest.raises(BadInput, match="title must be a string"):
        put(title=12)
    with pytest.raises(BadInput, match="max_title_chars"):
        put(title="t" * 31)


def test_checks_come_before_chunking(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("chunked a put with a bad key")

    monkeypatch.setattr(documents, "chunk_rows", boom)
    with pytest.raises(BadInput, match="key"):
        put(key="")


# --- PDF, HTML and DOCX: checked at once, finished with what the extraction child made --------
PDF_BYTES = b"%PDF-1.7\n1 0 obj << >> endobj\n%%EOF\n"
HTML_BYTES = b"<!doctype html><html><head><title>T</title></head><body><p>Gout.</p></body></html>"
DOCX_BYTES = b"PK\x03\x04" + b"\x00" * 26 + b"word/document.xml" + b"\x00" * 40


def check(content, **fields):
    return documents.check("doc", content, limits=LIMITS, **fields)


@pytest.mark.parametrize("content, ctype", [(PDF_BYTES, PDF), (HTML_BYTES, HTML), (DOCX_BYTES, DOCX)])
def test_bytes_are_sniffed_and_a_document_waits_for_extraction(content, ctype):
    for declared in (None, ctype, ctype.upper() + "; charset=windows-1252"):  # a page's charset is its own
        checked = check(content, content_type=declared)
        assert checked.content_type == ctype and checked.needs_extraction and checked.text is None
        assert checked.data == content
    with pytest.raises(BadInput, match="not taken here"):  # prepare without an extractor: text only
        put(content=content)


def test_text_bytes_stay_text_and_a_markdown_claim_stays_markdown():
    plain = check(b"# Gout\nurate\n")
    assert (plain.content_type, plain.text, plain.needs_extraction) == (TEXT, "# Gout\nurate\n", False)
    assert check(b"# Gout\nurate\n", content_type="text/markdown").content_type == MARKDOWN
    # HTML source sent as text is taken as the text it is
    assert check(HTML_BYTES, content_type="text/plain").text == HTML_BYTES.decode()


@pytest.mark.parametrize("content, declared, needle", [
    (HTML_BYTES, PDF, "sent as application/pdf but the content is HTML"),
    (PDF_BYTES, HTML, "but the content is PDF"),
    (PDF_BYTES, "text/plain", "but the content is PDF"),
    (b"just some words", PDF, "not PDF"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", None, r"binary content \(PNG image\), not text"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", DOCX, "binary"),
    (b"PK\x03\x04" + b"\x00" * 40 + b"PK\x05\x06" + b"\x00" * 18, DOCX, "ZIP archive, not a Word document"),
])
def test_bytes_that_contradict_the_type_are_one_line_bad_requests(content, declared, needle):
    with pytest.raises(BadInput, match=needle) as caught:
        check(content, content_type=declared)
    assert caught.value.code == E_BAD_REQUEST and "\n" not in str(caught.value)


def test_a_document_type_takes_bytes_and_the_size_comes_before_the_sniffing():
    with pytest.raises(BadInput, match="takes bytes, not a string"):
        check("<html><body>hi</body></html>", content_type=HTML)
    with pytest.raises(TooLarge):
        check(PDF_BYTES + b" " * 1000, content_type=PDF)
    with pytest.raises(BadInput, match="key"):  # the cheap fields first
        documents.check("", PDF_BYTES, limits=LIMITS)


def extracted(title=None, sections=None):
    sections = sections or [Section("Gout guideline", page=1, kind="heading"),
                            Section(" ".join(f"first{i}" for i in range(12)), page=1),
                            Section(" ".join(f"third{i}" for i in range(12)), page=3)]
    return Extracted(PDF, title, sections, pages=3)


def finish(checked, result):
    return documents.finish(checked, result, limits=LIMITS, chunk_words=WORDS, chunk_overlap=OVERLAP)


def test_an_extracted_document_becomes_located_chunk_rows():
    up = finish(check(PDF_BYTES, metadata={"year": 2022}), extracted("ACR gout guideline"))
    assert (up.key, up.content_type, up.title, up.metadata) == ("doc", PDF, "ACR gout guideline", {"year": 2022})
    assert up.content_hash == hashlib.sha256(PDF_BYTES).hexdigest() and up.size == len(PDF_BYTES)
    assert up.chunks == documents.chunk_sections(extracted().sections, words=WORDS, overlap=OVERLAP)
    pages = [row[3] for row in up.chunks]
    assert pages[0] == 1 and pages[-1] == 3 and len(up.chunks) > 2
    assert any("third5" in row[1] and row[3] == 3 for row in up.chunks)
    assert up.store_fields()["chunks"] is up.chunks


def test_an_extracted_title_comes_after_the_puts_and_before_the_key():
    assert finish(check(PDF_BYTES, title="Given"), extracted("From the PDF")).title == "Given"
    assert finish(check(PDF_BYTES), extracted("  From\nthe   PDF ")).title == "From the PDF"  # one line
    assert finish(check(PDF_BYTES), extracted("t" * 50)).title == "t" * 30  # max_title_chars
    assert finish(check(PDF_BYTES), extracted(None)).title == "doc"  # not the first line: the key
    assert finish(check(PDF_BYTES), extracted("   ")).title == "doc"


def test_an_extracted_document_without_words_is_a_bad_request():
    with pytest.raises(BadInput, match="no text"):
        finish(check(PDF_BYTES), extracted(sections=[Section("  ", page=1)]))


def test_prepare_extracts_with_the_function_it_is_given():
    calls = []

    def extract(data, ctype):
        calls.append((data, ctype))
        return extracted("T")

    up = put(content=HTML_BYTES, extract=extract)
    assert calls == [(HTML_BYTES, HTML)] and up.content_type == HTML and up.title == "T"
    assert put(content="plain words", extract=extract).content_type == TEXT and len(calls) == 1
