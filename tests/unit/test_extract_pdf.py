"""extract_pdf on generated PDFs (tests/pdfgen.py) and its layout steps on made-up pages.

Acceptance 1 of issue 18 in process: a two-column PDF with a running header, a page-number
footer, a full-width gridded table and words hyphenated at line ends reads back in reading
order (word-sequence similarity >= 0.98), without the header, with each known sentence in
a section of its page. Each bad input ends in its one-line reason.
"""

from __future__ import annotations

import difflib
import re
import time

import pytest

from roxi_mp.extract import PDF, ExtractError
from roxi_mp.extract.pdf import join_lines, extract_pdf
from roxi_mp.extract.pdf_layout import Word, drop_running, find_gutter, group_rows, order_blocks
from tests import pdfgen


@pytest.fixture(scope="module")
def doc() -> pdfgen.GeneratedPdf:
    return pdfgen.two_column_pdf(pages=5)


@pytest.fixture(scope="module")
def got(doc):
    return extract_pdf(doc.data, max_pages=100)


def words(text: str) -> list[str]:
    return text.split()


def test_two_columns_read_in_order(doc, got):
    ratio = difflib.SequenceMatcher(None, words(got.text()), words(doc.text), autojunk=False).ratio()
    assert ratio >= 0.98, ratio


def test_pages_and_title(doc, got):
    assert got.content_type == PDF
    assert got.pages == 5
    assert got.title == pdfgen.META_TITLE
    numbers = [s.page for s in got.sections]
    assert numbers == sorted(numbers) and set(numbers) == {1, 2, 3, 4, 5}
    assert all(s.heading is None for s in got.sections)


def test_running_header_and_footer_are_removed(got):
    text = got.text()
    assert pdfgen.HEADER_LEFT not in text
    assert "Ann Roxi Dis" not in text
    assert not re.search(r"Page \d+ of \d+", text)


def test_known_sentences_sit_on_their_page(doc, got):
    assert len(doc.page_sentences[3]) >= 5
    for page, sentences in doc.page_sentences.items():
        on_page = [s.text for s in got.sections if s.page == page]
        for sentence in sentences:
            assert any(sentence in text for text in on_page), (page, sentence)


def test_hyphenated_words_are_whole(doc, got):
    assert len(doc.hyphenated) >= 10
    found = {w.strip(".,") for w in words(got.text())}
    assert not [w for w in doc.hyphenated if w not in found]
    # no word left cut ("inflam-"), and no pdfium line-end mark or soft hyphen left over
    assert not [w for w in found if re.fullmatch(r"[a-z]+-", w)]
    assert not set("\x02\ufffe\xad") & set(got.text())


def test_table_rows_stay_rows(got):
    tables = [s for s in got.sections if s.kind == "table"]
    assert len(tables) == 1
    assert tables[0].page == 2
    assert tables[0].text.split("\n") == [" | ".join(row) for row in pdfgen.TABLE]


def test_paragraph_lines_are_joined(got):
    texts = [s.text for s in got.sections if s.kind == "text"]
    assert len(texts) >= 20  # paragraphs, not one block per page
    assert not [t for t in texts if "\n" in t]


# -- bad input: each one line, exactly ---------------------------------------------------

def reason(data: bytes, max_pages: int = 100) -> str:
    with pytest.raises(ExtractError) as caught:
        extract_pdf(data, max_pages=max_pages)
    return str(caught.value)


def test_encrypted_pdf_is_refused():
    assert reason(pdfgen.encrypted_pdf()) == "encrypted; not supported"


def test_encrypted_pdf_without_user_password_is_read():
    got = extract_pdf(pdfgen.owner_only_pdf(), max_pages=10)
    assert "anchor drug" in got.text()


def test_image_only_pdf_has_no_text():
    assert reason(pdfgen.image_only_pdf()) == "no extractable text: scanned? OCR is not supported"


def test_truncated_pdf_is_not_readable(doc):
    assert reason(pdfgen.truncated_pdf(doc.data)) == "not a readable PDF: damaged or not a PDF"
    # cut in its last bytes, pdfium would repair it and read it: still refused
    assert reason(doc.data[:-6]) == "not a readable PDF: truncated (no %%EOF at the end)"
    assert reason(b"%PDF-1.7\nnot really") == "not a readable PDF: damaged or not a PDF"


@pytest.fixture(scope="module")
def empty_pages() -> bytes:
    return pdfgen.empty_pages_pdf(10_000)


def test_ten_thousand_pages_are_over_max_pages(empty_pages):
    start = time.perf_counter()
    assert reason(empty_pages, max_pages=2000) == "10000 pages, over extract.max_pages (2000)"
    assert time.perf_counter() - start < 5.0  # refused on the page count, not page by page


def test_ten_thousand_empty_pages_within_the_limit_have_no_text(empty_pages):
    assert reason(empty_pages, max_pages=10_000) == "no extractable text: scanned? OCR is not supported"


# -- joining lines ------------------------------------------------------------------------

@pytest.mark.parametrize("lines, text", [
    (["the inflam-", "mation settled"], "the inflammation settled"),
    (["the inflam\x02", "mation settled"], "the inflammation settled"),
    (["the inflam\xad", "mation settled"], "the inflammation settled"),
    (["an anti-", "TNF agent"], "an anti-TNF agent"),
    (["after COVID-", "19 infection"], "after COVID-19 infection"),
    (["dose -", "response"], "dose - response"),
    (["first line", "second line"], "first line second line"),
])
def test_join_lines(lines, text):
    assert join_lines(lines) == text


# -- layout on made-up pages ------------------------------------------------------------

def line_words(text: str, x: float, y: float, size: float = 10.0) -> list[Word]:
    """Words of one line set at (x, y), each character 5 points wide."""
    out = []
    for word in text.split():
        out.append(Word(word, x, x + 5 * len(word), y, y + size))
        x += 5 * len(word) + 3
    return out


def page_text(blocks) -> list[str]:
    return [" ".join(line.texts()) for block in blocks for line in block]


def two_column_page() -> list[Word]:
    ws = line_words("A title that runs across both of the columns here", 50, 40)
    for i in range(8):
        ws += line_words(f"left line {i} of the first column text", 50, 70 + 12 * i)
        ws += line_words(f"right line {i} of the second column text", 300, 70 + 12 * i)
    return ws


def test_two_columns_read_column_by_column_after_a_spanning_title():
    rows = group_rows(two_column_page())
    gutter = find_gutter(rows)
    assert gutter is not None and 216 <= gutter[0] < gutter[1] <= 300
    lines = page_text(order_blocks(rows, gutter))
    assert lines[0].startswith("A title")
    assert lines[1:9] == [f"left line {i} of the first column text" for i in range(8)]
    assert lines[9:] == [f"right line {i} of the second column text" for i in range(8)]


def test_one_column_has_no_gutter():
    ws = []
    for i in range(10):
        ws += line_words(f"a single column line number {i} reads across the page width", 50, 70 + 12 * i)
    assert find_gutter(group_rows(ws)) is None


def test_running_lines_go_with_digits_ignored():
    pages = []
    for n in range(1, 5):
        ws = line_words("Journal of Tests 2024", 50, 20) + line_words(f"Page {n} of 4", 250, 770)
        ws += line_words(f"body text {n} of page", 50, 100) + line_words("more body", 50, 112)
        pages.append((group_rows(ws), 792.0))
    kept = drop_running(pages)
    texts = [" ".join(w.text for row in rows for w in row) for rows in kept]
    assert texts == [f"body text {n} of page more body" for n in range(1, 5)]


def test_columns_whose_lines_do_not_line_up_are_still_columns():
    """The right column's baselines sit half a line lower than the left's: no row holds
    both, yet the page still has two columns."""
    ws = []
    for i in range(8):
        ws += line_words(f"left line {i} of the first column text", 50, 70 + 12 * i)
        ws += line_words(f"right line {i} of the second column text", 300, 76 + 12 * i)
    rows = group_rows(ws)
    assert all(len({w.x0 < 250 for w in row}) == 1 for row in rows)  # one column per row
    lines = page_text(order_blocks(rows, find_gutter(rows)))
    assert lines == ([f"left line {i} of the first column text" for i in range(8)]
                     + [f"right line {i} of the second column text" for i in range(8)])


def test_options_and_their_descriptions_are_not_two_columns():
    """A narrow left part and a wide right one, parted by a wide gap on every line (a
    list of command options): read line by line, not as two columns."""
    ws = []
    for i in range(8):
        ws += line_words(f"--option-{i}", 50, 70 + 12 * i)
        ws += line_words(f"what option {i} does when it is given on the command line", 170, 70 + 12 * i)
    rows = group_rows(ws)
    assert find_gutter(rows) is None
    assert page_text(order_blocks(rows, None))[0] == "--option-0 what option 0 does when it is given on the command line"
