"""HTML and Word extraction (issue 18, acceptance 2 in process): the known text in reading
order, boilerplate never indexed, heading paths, tables as rows, titles, and each hostile
or broken input refused with one line, quickly."""

from __future__ import annotations

import difflib
import io
import time
import zipfile
import zlib

import docx
import pytest
from docx.oxml import parse_xml

from roxi_mp.extract import DOCX, HTML, ExtractError
from roxi_mp.extract.docx import extract_docx
from roxi_mp.extract.html import MAX_TAGS, extract_html
from tests import markupgen

#: seconds a refusal may take on a loaded CI machine (they take milliseconds)
QUICKLY = 10.0
LIMIT = 256 * 1024 * 1024  # extract.max_unzipped_bytes default


def similarity(got: str, known: str) -> float:
    return difflib.SequenceMatcher(None, got.split(), known.split(), autojunk=False).ratio()


def refused(extract, data: bytes, **kw) -> str:
    """The one-line reason `extract` refuses `data` with, checked to come quickly."""
    started = time.monotonic()
    with pytest.raises(ExtractError) as caught:
        extract(data, **kw)
    assert time.monotonic() - started < QUICKLY
    reason = str(caught.value)
    assert reason and "\n" not in reason
    return reason


@pytest.fixture(scope="module")
def page():
    data, known = markupgen.html_page()
    return extract_html(data), known


@pytest.fixture(scope="module")
def word():
    data, known = markupgen.docx_document()
    return extract_docx(data, max_unzipped_bytes=LIMIT), known


def docx_bytes(document) -> bytes:
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


# --- HTML ---

def test_html_gives_the_known_text_in_reading_order(page):
    extracted, known = page
    assert extracted.content_type == HTML
    assert similarity(extracted.text(), known) >= 0.98
    assert all(s.page is None for s in extracted.sections)


def test_html_boilerplate_is_never_indexed(page):
    text = page[0].text().lower()
    assert [m for m in markupgen.MARKERS if m in text] == []
    assert "guidelines" not in text  # the nav's second link, no marker word in it


def test_html_sections_carry_their_heading_path(page):
    sections = page[0].sections
    sentence, path = markupgen.HTML_PROBE
    assert [s.heading for s in sections if s.text == sentence] == [path]
    headings = [(s.text, s.heading) for s in sections if s.kind == "heading"]
    assert headings[:3] == [(markupgen.TITLE, markupgen.TITLE),
                            ("Dosing", f"{markupgen.TITLE} > Dosing"),
                            ("Folic acid", f"{markupgen.TITLE} > Dosing > Folic acid")]
    # an h2 after an h3 closes the h3
    assert headings[3] == ("Monitoring", f"{markupgen.TITLE} > Monitoring")


def test_html_tables_are_rows_and_inline_markup_keeps_word_boundaries(page):
    sections = page[0].sections
    tables = [s.text for s in sections if s.kind == "table"]
    assert tables == ["\n".join(" | ".join(row) for row in markupgen.TABLE)]
    assert "Inline markup keeps words whole: a bold word and a link, then a line break." in [
        s.text for s in sections]


def test_html_title_from_title_else_first_h1():
    assert extract_html(markupgen.html_page()[0]).title == markupgen.TITLE
    assert extract_html(b"<body><p>a</p><h1>First</h1><h1>Second</h1></body>").title == "First"
    assert extract_html(b"<p>no heading</p>").title is None


def test_html_decodes_by_bom_and_meta_charset_and_replaces_bad_bytes():
    latin = ("<html><head><meta http-equiv='Content-Type' content='text/html; "
             "charset=ISO-8859-1'><title>Caf\u00e9</title></head><body><p>na\u00efve "
             "\u2018quoted\u2019</p></body></html>").encode("cp1252")
    got = extract_html(latin)
    assert (got.title, got.text()) == ("Caf\u00e9", "na\u00efve \u2018quoted\u2019")
    utf16 = b"\xff\xfe" + "<p>\u00b5g/kg</p>".encode("utf-16-le")
    assert extract_html(utf16).text() == "\u00b5g/kg"
    assert extract_html(b"<p>bad \xff byte</p>").text() == "bad \ufffd byte"


def test_html_takes_main_or_a_single_article():
    outside = b"<p>outside</p>"
    assert extract_html(b"<body>" + outside + b"<main><p>in main</p></main></body>").text() \
        == "in main"
    one = b"<body>" + outside + b"<article><header><h1>Own title</h1></header><p>body</p>" \
        b"<footer>share this</footer></article></body>"
    got = extract_html(one)
    assert got.text() == "Own title\n\nbody"  # an article's header is its own; kept
    two = b"<body>" + outside + b"<article>one</article><article>two</article></body>"
    assert extract_html(two).text() == "outside\n\none\n\ntwo"
    empty_main = b"<body>" + outside + b"<main></main></body>"  # filled by scripts
    assert extract_html(empty_main).text() == "outside"


def test_html_nested_tables_and_blocks_inside_headings_are_flattened():
    got = extract_html(b"<table><tr><td>a<table><tr><td>n1</td><td>n2</td></tr></table></td>"
                       b"<td><p>b</p><p>c</p></td></tr></table><h2>A<div>B</div></h2>x")
    assert [(s.kind, s.text, s.heading) for s in got.sections] == [
        ("table", "a n1 n2 | b c", None), ("heading", "A B", "A B"), ("text", "x", "A B")]


def test_html_50_mb_of_nested_tags_is_refused():
    assert "tags" in refused(extract_html, markupgen.nested_html())


def test_html_nesting_past_the_parser_limit_is_refused_not_cut_short():
    assert "nested" in refused(extract_html, b"<div>" * 300 + b"text")


def test_html_too_many_tags_are_refused_before_parsing():
    assert "tags" in refused(extract_html, b"<p>x" * (MAX_TAGS + 1))


@pytest.mark.parametrize("data", [b"", b"   ", b"<html><head><script>x()</script></head></html>",
                                  b"<body><nav>only navigation</nav><div hidden>h</div></body>"])
def test_html_without_text_is_refused(data):
    assert refused(extract_html, data).startswith("no text")


# --- DOCX ---

def test_docx_gives_the_known_text_in_reading_order(word):
    extracted, known = word
    assert extracted.content_type == DOCX
    assert similarity(extracted.text(), known) >= 0.98
    assert all(s.page is None for s in extracted.sections)


def test_docx_sections_carry_their_heading_path(word):
    sections = word[0].sections
    sentence, path = markupgen.DOCX_PROBE
    assert [s.heading for s in sections if s.text == sentence] == [path]
    assert [(s.text, s.heading) for s in sections if s.kind == "heading"][:3] == [
        ("Methotrexate guideline", "Methotrexate guideline"),
        ("Background", "Methotrexate guideline > Background"),
        ("Monitoring", "Methotrexate guideline > Monitoring")]


def test_docx_tables_are_rows_with_nested_tables_flattened(word):
    tables = [s.text for s in word[0].sections if s.kind == "table"]
    rows = [" | ".join(row) for row in markupgen.TABLE] + ["Nested | inner one inner two | "]
    assert tables == ["\n".join(rows)]


def test_docx_merged_cells_give_their_text_once():
    document = docx.Document()
    table = document.add_table(rows=2, cols=3)
    for (r, c), text in {(0, 0): "A", (0, 2): "x", (1, 2): "y", (1, 1): "b"}.items():
        table.cell(r, c).text = text
    table.cell(0, 0).merge(table.cell(1, 0))  # vertical
    table.cell(0, 1).text = "wide"
    assert extract_docx(docx_bytes(document), max_unzipped_bytes=LIMIT).text() == \
        "A | wide | x\n | b | y"


def test_docx_title_from_core_properties_else_title_style_else_heading_1():
    data, _ = markupgen.docx_document(core_title="Core title")
    assert extract_docx(data, max_unzipped_bytes=LIMIT).title == "Core title"
    data, _ = markupgen.docx_document()
    assert extract_docx(data, max_unzipped_bytes=LIMIT).title == markupgen.DOCX_TITLE
    document = docx.Document()
    document.add_paragraph("text first")
    document.add_heading("First chapter", level=1)
    assert extract_docx(docx_bytes(document), max_unzipped_bytes=LIMIT).title == "First chapter"
    document = docx.Document()
    document.add_paragraph("no headings")
    assert extract_docx(docx_bytes(document), max_unzipped_bytes=LIMIT).title is None


def test_docx_reads_tracked_insertions_and_content_controls_not_deletions():
    document = docx.Document()
    w = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    document.element.body.insert(0, parse_xml(
        f'<w:p {w}><w:r><w:t xml:space="preserve">kept </w:t></w:r>'
        '<w:ins w:id="1" w:author="a"><w:r><w:t>inserted</w:t></w:r></w:ins>'
        '<w:del w:id="2" w:author="a"><w:r><w:delText>deleted</w:delText></w:r></w:del></w:p>'))
    document.element.body.insert(1, parse_xml(
        f'<w:sdt {w}><w:sdtContent><w:p><w:r><w:t>in a control</w:t></w:r></w:p>'
        '</w:sdtContent></w:sdt>'))
    got = extract_docx(docx_bytes(document), max_unzipped_bytes=LIMIT)
    assert got.text() == "kept inserted\n\nin a control"


def test_docx_zip_bomb_is_refused_before_inflating():
    bomb = markupgen.zip_bomb_docx()  # 1 GiB of zeros in about 1 MB
    assert zipfile.ZipFile(io.BytesIO(bomb)).getinfo("word/document.xml").file_size == 1 << 30
    assert refused(extract_docx, bomb, max_unzipped_bytes=LIMIT).startswith("zip bomb? it unzips")
    # under a higher total limit, its compression ratio gives it away
    assert refused(extract_docx, bomb, max_unzipped_bytes=4 << 30).startswith(
        "zip bomb? an entry inflates")


def test_docx_entry_inflating_past_its_declared_size_is_refused():
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = deflater.compress(bytes(8 << 20)) + deflater.flush()
    # declares 1000 bytes, and carries the CRC of the 1000 bytes zipfile would keep
    lying = markupgen._zip([("word/document.xml", 8, stream, zlib.crc32(bytes(1000)), 1000)])
    assert refused(extract_docx, lying, max_unzipped_bytes=LIMIT) == \
        "zip bomb? an entry inflates past its declared size"


def test_docx_with_too_many_entries_is_refused():
    many = markupgen.many_entries_zip(10_001)
    assert refused(extract_docx, many, max_unzipped_bytes=LIMIT) == \
        "zip bomb? over 10,000 entries"


def test_docx_bad_archives_get_their_one_line():
    other = io.BytesIO()
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert refused(extract_docx, other.getvalue(), max_unzipped_bytes=LIMIT) == \
        "a ZIP archive, not a Word document"
    good, _ = markupgen.docx_document()
    for broken in (b"plain text", good[:len(good) // 2]):
        assert refused(extract_docx, broken, max_unzipped_bytes=LIMIT).startswith(
            "not a readable Word document: ")
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512)
    assert "old-format" in refused(extract_docx, ole, max_unzipped_bytes=LIMIT)
    small = refused(extract_docx, good, max_unzipped_bytes=1000)
    assert small.startswith("zip bomb? it unzips to") and "1,000 bytes" in small


def test_docx_with_broken_xml_is_refused():
    good, _ = markupgen.docx_document()
    source = zipfile.ZipFile(io.BytesIO(good))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for entry in source.infolist():
            broken = entry.filename == "word/document.xml"
            archive.writestr(entry, b"<w:document" if broken else source.read(entry))
    assert refused(extract_docx, out.getvalue(), max_unzipped_bytes=LIMIT).startswith(
        "not a readable Word document: ")


def test_docx_without_text_is_refused():
    document = docx.Document()
    document.add_paragraph("   ")
    assert refused(extract_docx, docx_bytes(document), max_unzipped_bytes=LIMIT).startswith(
        "no text")
