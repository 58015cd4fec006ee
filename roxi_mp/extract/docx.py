"""Word (.docx) documents made into sections: paragraphs, headings with their paths, and
tables as rows, in body order.

A .docx is a ZIP archive, so it is checked as one before python-docx inflates anything: an
archive of too many entries, or one that would inflate past extract.max_unzipped_bytes, or
an entry of a compression ratio only a zip bomb has, is refused. The sizes checked are the
declared ones, so each deflated entry is also inflated here, in bounded steps, and refused
if it goes past its declared size (zipfile's own read would inflate up to 2 GiB before
it cut the entry at that size).

python-docx opens the package (relationships, styles, core properties). The body itself is
walked at the XML level (`Document.element`, with python-docx's namespace helper) because
its objects miss text: `iter_inner_content()` skips block content controls (a table of
contents, form regions), `Paragraph.text` skips tracked insertions, and `_Row.cells`
follows a vertical merge up recursively cell by cell (measured: a column merged over 1,500
rows took 35 s, then RecursionError; this walk reads it in 40 ms).
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib

import docx
from docx.oxml.ns import qn

from . import DOCX, ExtractError, Extracted, Section
from .html import Outline, collapse

#: entries a .docx may hold (Word writes a few dozen, plus one per image)
MAX_ENTRIES = 10_000
#: an entry this large (bytes) that inflates over MAX_RATIO times its compressed size...
BOMB_ENTRY_BYTES = 10 * 1024 * 1024
#: ... is a zip bomb (text XML deflates about 10:1; a megabyte of zeros over 1000:1)
MAX_RATIO = 100
#: bytes fed to, and taken from, the inflater in one step when an entry's size is checked
INFLATE_STEP = 1024 * 1024
#: an old binary Word file, or an encrypted .docx (both are OLE compound files)
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
#: central directory entry signature: their count bounds the entries zipfile would list
CENTRAL_ENTRY = b"PK\x01\x02"
LOCAL_ENTRY = b"PK\x03\x04"

W_P, W_TBL, W_TR, W_TC = qn("w:p"), qn("w:tbl"), qn("w:tr"), qn("w:tc")
W_T, W_TAB, W_BR, W_CR = qn("w:t"), qn("w:tab"), qn("w:br"), qn("w:cr")
W_NOBREAKHYPHEN, W_TXBX = qn("w:noBreakHyphen"), qn("w:txbxContent")
W_SDT, W_SDTCONTENT, W_CUSTOMXML = qn("w:sdt"), qn("w:sdtContent"), qn("w:customXml")
W_PPR, W_PSTYLE, W_TCPR, W_VMERGE, W_VAL = (
    qn("w:pPr"), qn("w:pStyle"), qn("w:tcPr"), qn("w:vMerge"), qn("w:val"))
W_STYLE, W_STYLEID, W_NAME, W_TYPE = qn("w:style"), qn("w:styleId"), qn("w:name"), qn("w:type")

_HEADING_STYLE = re.compile(r"heading\s*([1-9])$")
TITLE_LEVEL = 0  # the Title style sits above Heading 1


def extract_docx(data: bytes, *, max_unzipped_bytes: int) -> Extracted:
    """A Word document's body as sections and its title. Raises ExtractError with a
    one-line reason (zip bomb, not a Word document, unreadable)."""
    check_archive(data, max_unzipped_bytes=max_unzipped_bytes)
    try:
        document = docx.Document(io.BytesIO(data))
        body = document.element.body
        levels = _style_levels(document)
        core_title = collapse(document.core_properties.title or "")
    except MemoryError:
        raise
    except Exception as e:  # python-docx and lxml raise many kinds on a broken package
        raise ExtractError(f"not a readable Word document: {_first_line(e)}") from e
    flow = _Flow(levels)
    for element in _blocks(body):
        if element.tag == W_P:
            flow.paragraph(element)
        else:
            flow.table(element)
    if not flow.sections:
        raise ExtractError("no text (the document is empty)")
    return Extracted(DOCX, core_title or flow.first_title, flow.sections)


def check_archive(data: bytes, *, max_unzipped_bytes: int) -> None:
    """Refuse what is not a sound .docx archive before anything inflates it whole."""
    if data.startswith(OLE_MAGIC):
        raise ExtractError("an encrypted or old-format (.doc) Word file; not supported")
    if data.count(CENTRAL_ENTRY) > MAX_ENTRIES:
        raise ExtractError(f"zip bomb? over {MAX_ENTRIES:,} entries")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
            _check_sizes(entries, max_unzipped_bytes)
            if "word/document.xml" not in {e.filename for e in entries}:
                raise ExtractError("a ZIP archive, not a Word document")
            for entry in entries:
                _inflates_as_declared(data, entry)
    except ExtractError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error, ValueError,
            EOFError, OSError, NotImplementedError, RuntimeError) as e:
        raise ExtractError(f"not a readable Word document: {_first_line(e)}") from e


def _check_sizes(entries: list[zipfile.ZipInfo], max_unzipped_bytes: int) -> None:
    if len(entries) > MAX_ENTRIES:
        raise ExtractError(f"zip bomb? over {MAX_ENTRIES:,} entries")
    total = sum(e.file_size for e in entries)
    if total > max_unzipped_bytes:
        raise ExtractError(f"zip bomb? it unzips to {_mb(total)} "
                           f"(over extract.max_unzipped_bytes, {_mb(max_unzipped_bytes)})")
    for entry in entries:
        ratio = entry.file_size / max(entry.compress_size, 1)
        if entry.file_size > BOMB_ENTRY_BYTES and ratio > MAX_RATIO:
            raise ExtractError(f"zip bomb? an entry inflates {ratio:,.0f} times "
                               f"to {_mb(entry.file_size)}")
        if entry.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            # zipfile inflates bzip2 and LZMA entries in one unbounded step
            raise ExtractError(f"not a readable Word document: compression method "
                               f"{entry.compress_type} (Word writes deflate)")


def _inflates_as_declared(data: bytes, entry: zipfile.ZipInfo) -> None:
    """Inflate a deflated entry in INFLATE_STEP steps and refuse it if it goes past its
    declared size. zipfile cuts an entry at that size too, but only after inflating all
    its data (up to 2 GiB) in one step, and a bomb can carry the CRC of what is kept."""
    if entry.compress_type != zipfile.ZIP_DEFLATED or entry.is_dir():
        return  # stored: what is read is what the archive holds
    if entry.flag_bits & 0x1:
        raise ExtractError("an encrypted ZIP entry; not supported")
    start = entry.header_offset
    if data[start:start + 4] != LOCAL_ENTRY:
        raise ExtractError("not a readable Word document: bad ZIP entry header")
    name_length, extra_length = struct.unpack_from("<HH", data, start + 26)
    start += 30 + name_length + extra_length
    raw = memoryview(data)[start:start + entry.compress_size]
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    left = entry.file_size
    for offset in range(0, len(raw), INFLATE_STEP):
        pending = raw[offset:offset + INFLATE_STEP]
        while pending and not inflater.eof:
            left -= len(inflater.decompress(pending, INFLATE_STEP))
            if left < 0:
                raise ExtractError("zip bomb? an entry inflates past its declared size")
            pending = inflater.unconsumed_tail
        if inflater.eof:
            return


def _mb(size: int) -> str:
    if size < 1024 * 1024:
        return f"{size:,} bytes"
    return f"{size / (1024 * 1024):,.0f} MB"


def _first_line(error: Exception) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:120]


def _style_levels(document) -> dict[str, int]:
    """Heading level by paragraph style id: Title 0, "Heading N" N. Read from the styles
    XML (python-docx's style objects cost 6 ms a document for the 160 built-in styles)."""
    levels = {}
    for style in document.styles.element.iterchildren(W_STYLE):
        name = style.find(W_NAME)
        style_id = style.get(W_STYLEID)
        if name is None or not style_id or style.get(W_TYPE, "paragraph") != "paragraph":
            continue
        name = (name.get(W_VAL) or "").strip().lower()
        if name == "title":
            levels[style_id] = TITLE_LEVEL
        elif found := _HEADING_STYLE.match(name):
            levels[style_id] = int(found.group(1))
    return levels


def _style_level(paragraph, levels: dict[str, int]) -> int | None:
    ppr = paragraph.find(W_PPR)
    style = ppr.find(W_PSTYLE) if ppr is not None else None
    style_id = style.get(W_VAL) if style is not None else None
    if not style_id:
        return None
    if style_id in levels:
        return levels[style_id]
    # a style used without a definition in styles.xml (some generators): its id
    if style_id.lower() == "title":
        return TITLE_LEVEL
    found = _HEADING_STYLE.match(style_id.lower())
    return int(found.group(1)) if found else None


def _blocks(body):
    """Paragraphs and tables of the body in order, content controls and custom XML
    blocks opened up; iterative (an explicit stack of child iterators)."""
    stack = [iter(body)]
    while stack:
        element = next(stack[-1], None)
        if element is None:
            stack.pop()
        elif element.tag in (W_P, W_TBL):
            yield element
        elif element.tag == W_SDT:
            content = element.find(W_SDTCONTENT)
            if content is not None:
                stack.append(iter(content))
        elif element.tag == W_CUSTOMXML:
            stack.append(iter(element))


def paragraph_text(paragraph) -> str:
    """A w:p's visible text: runs wherever they sit (hyperlinks, insertions, content
    controls, fields' results), tabs and breaks as spaces; deleted text, field codes
    and text boxes (their own paragraphs) left out."""
    boxed = paragraph.find(f".//{W_TXBX}") is not None
    parts = []
    for element in paragraph.iter(W_T, W_TAB, W_BR, W_CR, W_NOBREAKHYPHEN):
        if boxed and _in_text_box(element, paragraph):
            continue
        if element.tag == W_T:
            parts.append(element.text or "")
        else:
            parts.append("-" if element.tag == W_NOBREAKHYPHEN else " ")
    return collapse("".join(parts))


def _in_text_box(element, paragraph) -> bool:
    for ancestor in element.iterancestors():
        if ancestor is paragraph:
            return False
        if ancestor.tag == W_TXBX:
            return True
    return False


class _Flow:
    """Sections as the body's blocks arrive, with the heading path they sit under."""

    def __init__(self, levels: dict[str, int]) -> None:
        self.levels = levels
        self.sections: list[Section] = []
        self.first_title: str | None = None  # first Title, else first Heading 1
        self._title_found = False
        self._outline = Outline()

    def paragraph(self, element) -> None:
        text = paragraph_text(element)
        if not text:
            return
        level = _style_level(element, self.levels)
        if level is None:
            self.sections.append(Section(text, heading=self._outline.path()))
            return
        self.sections.append(Section(text, heading=self._outline.enter(level, text),
                                     kind="heading"))
        if level == TITLE_LEVEL and not self._title_found:
            self.first_title, self._title_found = text, True
        elif level == 1 and self.first_title is None:
            self.first_title = text

    def table(self, element) -> None:
        rows = []
        for row in element.iterchildren(W_TR):
            cells = [_cell_text(cell) for cell in row.iterchildren(W_TC)]
            if any(cells):
                rows.append(" | ".join(cells))
        if rows:
            self.sections.append(Section("\n".join(rows), heading=self._outline.path(),
                                         kind="table"))


def _cell_text(cell) -> str:
    """A cell's paragraphs joined by spaces, those of tables nested in it included; the
    continuation of a vertically merged cell is empty (its text is in the cell above)."""
    tcpr = cell.find(W_TCPR)
    merge = tcpr.find(W_VMERGE) if tcpr is not None else None
    if merge is not None and merge.get(W_VAL, "continue") == "continue":
        return ""
    texts = (paragraph_text(p) for p in cell.iter(W_P))
    return " ".join(text for text in texts if text)
