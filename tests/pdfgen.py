"""Test PDFs written with reportlab (a test dependency; roxi_mp never imports it).

`two_column_pdf` lays out a guideline-like document itself, line by line, so the test
knows exactly what a reader would read and in which order: a full-width title, two
justified columns with a running header and a "Page n of N" footer on every page, words
hyphenated at line ends, and a full-width table with a grid (rows of three cells) between
two bands of columns on page 2. It returns the bytes with the known text in reading order
and, per page, the sentences that lie whole in one column of that page.

The bad inputs: an encrypted PDF (a user password), one encrypted with only an owner
password (opens with the empty password, so it is read), an image-only page (a scan:
pixels, no text), 10,000 empty pages, and a PDF cut short.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field

from reportlab.lib import colors
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen import canvas
from reportlab.platypus import Table, TableStyle

PAGE_W, PAGE_H = 612.0, 792.0
MARGIN = 54.0
GUTTER = 18.0
COL_W = (PAGE_W - 2 * MARGIN - GUTTER) / 2
FONT, SIZE, LEADING = "Times-Roman", 10.0, 12.5
PARA_SPACE = 7.0
BODY_TOP, BODY_BOTTOM = PAGE_H - 72.0, 66.0

TITLE = "Management of early rheumatoid arthritis: recommendations written to test the extractor"
META_TITLE = "Early rheumatoid arthritis: a test guideline"
HEADER_LEFT = "Roxi Rheumatology Guidelines 2024"
HEADER_RIGHT = "Ann Roxi Dis 2024;18:301-312"
TABLE = [
    ["Drug", "Starting dose", "Level of evidence"],
    ["Methotrexate", "15 mg weekly, rising to 25 mg within weeks", "1a"],
    ["Sulfasalazine", "1 g daily", "1b"],
    ["Hydroxychloroquine", "200 mg daily, up to 5 mg per kg", "2a"],
    ["Leflunomide", "20 mg daily", "1b"],
    ["Prednisolone bridging", "up to 10 mg daily for at most three months", "1a"],
]

_VOCABULARY = (
    "inflammation methotrexate glucocorticoids rheumatologist recommendations "
    "hydroxychloroquine sulfasalazine interleukin seropositive radiographic progression "
    "tocilizumab management monitoring assessment erosions synovitis biological "
    "conventional treatment patients disease activity remission therapy target weekly "
    "initial early clinical joint damage risk strategy should be the of and in with for "
    "to a is are on at after within months dose response ultrasound tenderness swelling "
    "morning stiffness serology antibodies combination escalation tapering infection "
    "screening vaccination hepatotoxicity adherence outcomes registry evidence panel "
    "consensus physicians questionnaire function quality measured visit").split()
_COMPOUNDS = ["anti-TNF", "IL-6", "COVID-19", "JAK-1"]


@dataclass
class GeneratedPdf:
    data: bytes
    text: str  # the words a reader reads, in reading order, space separated
    page_sentences: dict[int, list[str]] = field(default_factory=dict)
    hyphenated: list[str] = field(default_factory=list)  # words split across two lines
    pages: int = 0


def _width(text: str, font: str = FONT, size: float = SIZE) -> float:
    return stringWidth(text, font, size)


def _sentence(rng: random.Random) -> list[str]:
    words = [rng.choice(_COMPOUNDS) if rng.random() < 0.04 else rng.choice(_VOCABULARY)
             for _ in range(rng.randint(9, 17))]
    words[0] = words[0][0].upper() + words[0][1:]
    if rng.random() < 0.3:
        words[rng.randint(2, len(words) - 3)] += ","
    words[-1] += "."
    return words


def _split(word: str, fits) -> tuple[str, str] | None:
    """Split a word at a line's end: a long lower-case word anywhere (keeping at least
    four letters before and three after), a compound only at its hyphen before a capital
    or digit (where a reader keeps the hyphen)."""
    if word.isalpha() and word.islower() and len(word) >= 8:
        for k in range(len(word) - 3, 3, -1):
            if fits(word[:k] + "-"):
                return word[:k] + "-", word[k:]
        return None
    cut = word.find("-") + 1
    if cut and word[cut:cut + 1].isalnum() and not word[cut].islower() and fits(word[:cut]):
        return word[:cut], word[cut:]
    return None


class _Flow:
    """Paragraphs of random sentences broken into column lines as they are placed."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.tokens: list[str] = []
        self.sentence_of: list[int] = []
        self.sentences: list[list[str]] = []
        self.pos = 0
        self.rest: str | None = None  # the tail of a word split at the previous line
        self.hyphenated: list[str] = []
        self.known: list[str] = []

    def _more(self) -> None:
        for _ in range(self.rng.randint(2, 5)):
            words = _sentence(self.rng)
            self.sentence_of += [len(self.sentences)] * len(words)
            self.sentences.append(words)
            self.tokens += words
        self.para_end = len(self.tokens)

    def line(self, hyphenate: bool) -> tuple[str, bool, list[int]]:
        """The next line: its text, whether it ends its paragraph, tokens on it."""
        if self.pos >= len(self.tokens):
            self._more()
        parts: list[str] = []
        placed: list[int] = []
        while self.pos < self.para_end:
            piece = self.rest if self.rest is not None else self.tokens[self.pos]
            if not parts or _width(" ".join(parts + [piece])) <= COL_W:
                if self.rest is None:
                    self.known.append(self.tokens[self.pos])
                parts.append(piece)
                placed.append(self.pos)
                self.pos, self.rest = self.pos + 1, None
                continue
            split = None
            if hyphenate and self.rest is None:
                split = _split(piece, lambda head: _width(" ".join(parts + [head])) <= COL_W)
            if split:
                parts.append(split[0])
                placed.append(self.pos)
                self.known.append(piece)
                self.hyphenated.append(piece.rstrip(".,"))
                self.rest = split[1]
            break
        return " ".join(parts), self.pos >= self.para_end, placed


def _draw_line(c: canvas.Canvas, x: float, y: float, text: str, justify: bool) -> None:
    t = c.beginText(x, y)
    t.setFont(FONT, SIZE)
    gaps = text.count(" ")
    if justify and gaps:
        t.setWordSpace((COL_W - _width(text)) / gaps)
    t.textOut(text)
    c.drawText(t)


def _fill_band(c, flow: _Flow, page: int, band: int, top: float, bottom: float,
               where: dict[int, set], split_at_end: bool = True) -> None:
    """Fill the left then the right column between `top` and `bottom` (baselines). A
    word may be split across columns and pages, unless not `split_at_end`."""
    for col in (0, 1):
        x = MARGIN + col * (COL_W + GUTTER)
        y = top - SIZE
        while y >= bottom:
            last_line = y - LEADING < bottom
            text, ends, placed = flow.line(hyphenate=split_at_end or not last_line)
            _draw_line(c, x, y, text, justify=not ends)
            for i in placed:
                where.setdefault(i, set()).add((page, band, col))
            y -= LEADING + (PARA_SPACE if ends else 0.0)


def _draw_table(c: canvas.Canvas, top: float) -> float:
    width = 2 * COL_W + GUTTER
    table = Table(TABLE, colWidths=[0.28 * width, 0.47 * width, 0.25 * width])
    table.setStyle(TableStyle([
        ("GRID", (0, 0), (-1, -1), 0.5, colors.black),
        ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 9),
        ("FONT", (0, 1), (-1, -1), "Helvetica", 9),
    ]))
    _, height = table.wrapOn(c, width, 400)
    table.drawOn(c, MARGIN, top - height)
    return top - height


def _running(c: canvas.Canvas, page: int, pages: int) -> None:
    c.setFont("Helvetica", 8)
    c.drawString(MARGIN, PAGE_H - 40, HEADER_LEFT)
    c.drawRightString(PAGE_W - MARGIN, PAGE_H - 40, HEADER_RIGHT)
    c.drawCentredString(PAGE_W / 2, 36, f"Page {page} of {pages}")


def two_column_pdf(pages: int = 5, seed: int = 18) -> GeneratedPdf:
    rng = random.Random(seed)
    flow = _Flow(rng)
    where: dict[int, set] = {}
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=(PAGE_W, PAGE_H))
    c.setTitle(META_TITLE)
    known_before: list[str] = []
    table_at = None
    for page in range(1, pages + 1):
        _running(c, page, pages)
        top = BODY_TOP
        if page == 1:
            c.setFont("Helvetica-Bold", 15)
            head, tail = TITLE.split(": ")
            c.drawString(MARGIN, top - 15, head + ":")
            c.drawString(MARGIN, top - 34, tail)
            known_before = TITLE.split()
            top -= 52
        if page == 2:
            # a word split around the table would be read "inflam- | table | mation": a
            # typesetter does not split a word there (TeX's \brokenpenalty), nor do we
            _fill_band(c, flow, page, 0, top, 470.0, where, split_at_end=False)
            table_at = len(flow.known)
            top = _draw_table(c, 470.0 - 4) - 14
        _fill_band(c, flow, page, 1, top, BODY_BOTTOM, where)
        c.showPage()
    c.save()
    table_words = " ".join(" | ".join(row) for row in TABLE).split()
    known = known_before + flow.known[:table_at] + table_words + flow.known[table_at:]
    tokens_of: dict[int, list[int]] = {}
    for i, sid in enumerate(flow.sentence_of):
        tokens_of.setdefault(sid, []).append(i)
    page_sentences: dict[int, list[str]] = {}
    for sid, words in enumerate(flow.sentences):
        spots = set().union(*(where.get(i, set()) for i in tokens_of[sid]))
        if len(spots) == 1 and tokens_of[sid][-1] < flow.pos:
            page_sentences.setdefault(next(iter(spots))[0], []).append(" ".join(words))
    return GeneratedPdf(buf.getvalue(), " ".join(known), page_sentences, flow.hyphenated, pages)


def _one_page(**canvas_args) -> bytes:
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=(PAGE_W, PAGE_H), **canvas_args)
    c.setFont(FONT, SIZE)
    c.drawString(MARGIN, 700, "Methotrexate remains the anchor drug in early rheumatoid arthritis.")
    c.showPage()
    c.save()
    return buf.getvalue()


def encrypted_pdf(user_password: str = "secret") -> bytes:
    """Needs a password to open."""
    return _one_page(encrypt=user_password)


def owner_only_pdf() -> bytes:
    """Encrypted with an owner password only: opens with the empty password."""
    from reportlab.lib.pdfencrypt import StandardEncryption
    return _one_page(encrypt=StandardEncryption("", ownerPassword="owner", canCopy=0))


def image_only_pdf() -> bytes:
    """A page holding only a raster image, as a scanner writes it."""
    from PIL import Image
    rng = random.Random(5)
    image = Image.frombytes("L", (120, 160), bytes(rng.randrange(256) for _ in range(120 * 160)))
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=(PAGE_W, PAGE_H))
    c.drawImage(ImageReader(image), MARGIN, 200, width=480, height=540)
    c.showPage()
    c.save()
    return buf.getvalue()


def empty_pages_pdf(count: int = 10_000) -> bytes:
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=(PAGE_W, PAGE_H), pageCompression=0)
    for _ in range(count):
        c.showPage()
    c.save()
    return buf.getvalue()


def truncated_pdf(data: bytes, keep: float = 0.6) -> bytes:
    """The first `keep` part of a PDF: a download cut short."""
    return data[: int(len(data) * keep)]
