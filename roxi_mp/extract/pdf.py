"""PDF to located text with pypdfium2: one Section per paragraph or table, with its page.

pdfium reads the file and gives each character and its box; the order a person reads in
is rebuilt from the boxes by pdf_layout (columns, full-width rows, paragraphs, tables).
Here: opening the document and refusing what cannot be read (each refusal one line),
turning a page's characters into words, dropping running headers and footers across
pages, and joining a paragraph's lines into text (words hyphenated at a line's end made
whole again). Every pdfium object (document, page, text page) is closed as soon as it is
done with, not left to the garbage collector: the worker reads many files in one process.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from . import PDF, ExtractError, Extracted, Section
from .pdf_layout import (Box, Para, Word, drop_running, find_gutter, group_rows, order_blocks,
                         paragraphs, ruled_regions)

NO_TEXT = "no extractable text: scanned? OCR is not supported"
ENCRYPTED = "encrypted; not supported"
#: page objects looked at for table rules on a two-column page (a chart may hold thousands)
MAX_PATH_OBJECTS = 5000
#: a PDF ends with %%EOF within its last 1024 bytes (as readers require); one that does
#: not was cut short, and pdfium's repair would silently read only part of it
EOF_WINDOW = 1024

_OPEN_ERRORS = {
    pdfium_c.FPDF_ERR_FILE: "cannot be read",
    pdfium_c.FPDF_ERR_FORMAT: "damaged or not a PDF",
    pdfium_c.FPDF_ERR_PAGE: "page tree damaged",
}
#: a word: anything but white space and control characters, except \x02, pdfium's mark
#: for a hyphen at a line's end (get_text_range gives it as U+FFFE)
_WORD = re.compile(r"[^\s\x00\x01\x03-\x1f]+")
#: hyphen marks at a line's end: a hyphen, pdfium's line-end hyphen, a soft hyphen
_HYPHENS = "-\x02\xad"
_LIGATURES = str.maketrans({"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi",
                            "\ufb04": "ffl", "\ufb05": "st", "\ufb06": "st"})
_SENTENCE_END = ".!?:;"


@dataclass
class _Page:
    rows: list[list[Word]]
    height: float
    gutter: tuple[float, float] | None
    regions: list[Box]


def extract_pdf(data: bytes, *, max_pages: int) -> Extracted:
    """The PDF's text as Sections in reading order, each with its 1-based page.

    Raises ExtractError (one line): encrypted (a password is needed), cut short or
    damaged, more pages than `max_pages`, or pages without any text (a scan)."""
    doc = _open(data)
    try:
        count = len(doc)
        if count > max_pages:
            raise ExtractError(f"{count} pages, over extract.max_pages ({max_pages})")
        title = _title(doc)
        pages = [_read_page(doc, index) for index in range(count)]
    finally:
        doc.close()
    sections = _sections(pages)
    if not sections:
        raise ExtractError(NO_TEXT)
    return Extracted(PDF, title, sections, count)


def _open(data: bytes) -> pdfium.PdfDocument:
    try:
        doc = pdfium.PdfDocument(bytes(data))
    except pdfium.PdfiumError as e:
        if e.err_code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
            raise ExtractError(ENCRYPTED) from None
        if e.err_code == pdfium_c.FPDF_ERR_SUCCESS:  # opened, but it has no page at all
            raise ExtractError("not a readable PDF: no pages") from None
        reason = _OPEN_ERRORS.get(e.err_code, "damaged or not a PDF")
        raise ExtractError(f"not a readable PDF: {reason}") from None
    if b"%%EOF" not in data[-EOF_WINDOW:]:
        doc.close()
        raise ExtractError("not a readable PDF: truncated (no %%EOF at the end)")
    return doc


def _title(doc: pdfium.PdfDocument) -> str | None:
    title = " ".join(doc.get_metadata_value("Title").split())
    # ReportLab writes "untitled" when no title was set: that is no title
    return title if title and title.lower() != "untitled" else None


def _read_page(doc: pdfium.PdfDocument, index: int) -> _Page:
    try:
        page = doc.get_page(index)
    except pdfium.PdfiumError:
        raise ExtractError(f"not a readable PDF: page {index + 1} cannot be loaded") from None
    try:
        left, bottom, right, top = page.get_bbox()
        textpage = page.get_textpage()
        try:
            words = [w for w in _words(textpage, top)
                     if w.x1 > left and w.x0 < right and w.bottom > 0 and w.top < top - bottom]
        finally:
            textpage.close()
        rows = group_rows(words)
        gutter = find_gutter(rows)
        regions: list[Box] = []
        if gutter is not None:
            text_height = rows[-1][0].bottom - rows[0][0].top
            regions = ruled_regions(_path_boxes(page, top), gutter, text_height)
        return _Page(rows, top - bottom, gutter, regions)
    except pdfium.PdfiumError:
        raise ExtractError(f"not a readable PDF: page {index + 1} cannot be read") from None
    finally:
        page.close()


def _words(textpage: pdfium.PdfTextPage, top: float) -> list[Word]:
    """The page's words with their boxes (top-down). A word's box is its first and last
    characters' (two box lookups per word, not one per character); a run that is not on
    one line by that test is measured character by character."""
    count = textpage.count_chars()
    if count <= 0:
        return []
    text = textpage.get_text_range().replace("\ufffe", "\x02")
    if len(text) != count:  # the text does not map one to one onto characters: ask each
        raw = textpage.raw
        text = "".join(chr(pdfium_c.FPDFText_GetUnicode(raw, k)) for k in range(count))
    words = []
    rect = pdfium_c.FS_RECTF()
    for m in _WORD.finditer(text):
        first, last = _box(textpage, m.start(), rect), _box(textpage, m.end() - 1, rect)
        height = first[3] - first[1]
        if (height > 0 and abs(first[1] - last[1]) <= 0.25 * height
                and first[0] <= last[2] <= first[0] + 1.5 * height * (m.end() - m.start())):
            words.append(Word(m.group(), first[0], last[2], top - max(first[3], last[3]),
                              top - min(first[1], last[1])))
        else:
            words += _char_words(textpage, text, m.start(), m.end(), top, rect)
    return words


def _box(textpage: pdfium.PdfTextPage, index: int,
         rect: pdfium_c.FS_RECTF) -> tuple[float, float, float, float]:
    """A character's loose box (the font's full height, so a line's boxes line up):
    (left, bottom, right, top), PDF coordinates."""
    pdfium_c.FPDFText_GetLooseCharBox(textpage.raw, index, rect)
    return rect.left, rect.bottom, rect.right, rect.top


def _char_words(textpage: pdfium.PdfTextPage, text: str, start: int, end: int,
                top: float, rect: pdfium_c.FS_RECTF) -> list[Word]:
    """Words of text[start:end] split where a character leaves the line or the next one
    is far away (pdfium put no space between them). Box-less characters join the word."""
    words: list[Word] = []
    chars: list[str] = []
    box: list[float] | None = None  # left, bottom, right, top of the word so far
    for k in range(start, end):
        left, bottom, right, up = _box(textpage, k, rect)
        height = up - bottom
        if height <= 0:
            chars.append(text[k])
            continue
        if box is not None and (abs(bottom - box[1]) > 0.5 * height or left < box[0]
                                or left - box[2] > 0.3 * height):
            words.append(Word("".join(chars), box[0], box[2], top - box[3], top - box[1]))
            chars, box = [], None
        chars.append(text[k])
        box = [left, bottom, right, up] if box is None else [
            box[0], min(box[1], bottom), max(box[2], right), max(box[3], up)]
    if box is not None:
        words.append(Word("".join(chars), box[0], box[2], top - box[3], top - box[1]))
    return words


def _path_boxes(page: pdfium.PdfPage, top: float) -> list[Box]:
    """Bounds of the page's drawn paths (rules, cell borders, shading), top-down. Only
    the page's own objects: paths inside form XObjects are not looked into."""
    raw = page.raw
    left, bottom, right, up = (ctypes.c_float() for _ in range(4))
    boxes = []
    for k in range(min(pdfium_c.FPDFPage_CountObjects(raw), MAX_PATH_OBJECTS)):
        obj = pdfium_c.FPDFPage_GetObject(raw, k)
        if (pdfium_c.FPDFPageObj_GetType(obj) == pdfium_c.FPDF_PAGEOBJ_PATH
                and pdfium_c.FPDFPageObj_GetBounds(obj, left, bottom, right, up)):
            boxes.append(Box(left.value, right.value, top - up.value, top - bottom.value))
    return boxes


def _sections(pages: list[_Page]) -> list[Section]:
    kept = drop_running([(p.rows, p.height) for p in pages])
    located: list[tuple[int, Para]] = []
    for number, (page, rows) in enumerate(zip(pages, kept), start=1):
        for para in paragraphs(order_blocks(rows, page.gutter, page.regions)):
            _append(located, number, para)
    sections = []
    for number, para in located:
        if para.kind == "table":
            text = "\n".join(" | ".join(_clean(c) for c in cells) for cells in para.lines)
        else:
            text = join_lines([" ".join(cells) for cells in para.lines])
        if text.strip():
            sections.append(Section(text, number, None, para.kind))
    return sections


def _append(located: list[tuple[int, Para]], number: int, para: Para) -> None:
    """Add a paragraph, or continue the previous one when this one opens a column or page
    in mid-sentence (the previous one ends without a sentence's end and this one starts in
    lower case). On the same page the two become one paragraph; across pages each keeps
    its page, and only a word hyphenated across the break moves back whole."""
    if not located or not para.opens_block or para.kind != "text":
        located.append((number, para))
        return
    prev_number, prev = located[-1]
    last, first = prev.lines[-1][-1], para.lines[0][0]
    if (prev.kind != "text" or not first[:1].islower()
            or last[-1:] in _SENTENCE_END):
        located.append((number, para))
    elif prev_number == number:
        prev.lines += para.lines
    else:
        if last[-1:] in _HYPHENS:
            word, _, rest = first.partition(" ")
            prev.lines[-1][-1] = join_lines([last, word])
            if rest:
                para.lines[0][0] = rest
            else:
                del para.lines[0][0]
            if not para.lines[0]:
                del para.lines[0]
        if para.lines:
            located.append((number, para))


def join_lines(lines: list[str]) -> str:
    """A paragraph's lines as one line. A word hyphenated at a line's end is made whole
    ("inflam-" + "mation" -> "inflammation", also after a soft hyphen or pdfium's line-end
    mark); a hyphen stays when the next line starts with a capital or a digit
    ("anti-" + "TNF", "COVID-" + "19"), which is a compound, not a split word."""
    text = lines[0] if lines else ""
    for line in lines[1:]:
        if not line:
            continue
        if len(text) >= 2 and text[-1] in _HYPHENS and text[-2].isalpha():
            if text[-1] == "\xad" or line[0].islower():
                text = text[:-1] + line
                continue
            if line[0].isupper() or line[0].isdigit():
                text = text[:-1] + "-" + line
                continue
        text = text + " " + line
    return _clean(text)


def _clean(text: str) -> str:
    return text.replace("\x02", "-").replace("\xad", "").translate(_LIGATURES)
