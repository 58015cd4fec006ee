"""Reading order of a PDF page from word boxes: rows, a column gutter, bands, paragraphs.

pdfium gives characters in content-stream order, which is the order a program drew them,
not the order a person reads them (a two-column page may draw both columns line by line,
or a table before the text above it). This module orders words by position only, so it is
plain Python on boxes (no pdfium) and is tested on made-up pages:

1. `group_rows`: words whose boxes overlap vertically form a row across the whole page.
2. `find_gutter`: a vertical strip near the middle that lines with text on both sides
   leave empty (a two-column page), or None (one column).
3. `order_blocks`: rows reading across the gutter (a title, a full-width table row) and
   rows in a ruled box that crosses it are read whole, in their place from top to bottom;
   between them, rows split into a left and a right column, read column by column.
4. `paragraphs`: within a block, a vertical gap or a change of font size starts a new
   paragraph; lines of cells that line up with their neighbours form a table.

Before 3, `drop_running` removes running headers and footers: margin lines that repeat
(numbers aside) on most pages.

Coordinates are top-down (y grows downwards from the page's top edge), in PDF points.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from statistics import median
from typing import Iterable, NamedTuple

#: a gap between words wider than this many line heights separates cells (table columns)
CELL_GAP = 0.8
#: fraction of a line's inner cell edges that must line up with a neighbour's for a table
TABLE_ALIGN = 0.5
#: points within which two cell edges count as lined up
ALIGN_TOL = 3.0
#: the part of the text width, from its left edge, where a column gutter may lie
GUTTER_SPAN = (0.2, 0.8)
#: narrowest gutter (points; a space between words is 2-4) and fewest lines it must part
GUTTER_MIN_WIDTH = 6.0
GUTTER_MIN_ROWS = 3
#: the narrower column is at least this part of the wider one's width
GUTTER_BALANCE = 0.6
#: running headers and footers: among the first or last MARGIN_ROWS rows of a page, in its
#: top or bottom MARGIN_PART, and on at least RUNNING_PART of the pages (and two)
MARGIN_ROWS = 3
MARGIN_PART = 0.15
RUNNING_PART = 0.4
#: a ruled region taller than this part of the page's text height is a frame, not a table
FRAME_PART = 0.6


class Word(NamedTuple):
    text: str
    x0: float
    x1: float
    top: float
    bottom: float


class Box(NamedTuple):
    """A drawn path's bounds (a rule, a cell border, a shaded box), top-down."""

    x0: float
    x1: float
    top: float
    bottom: float


@dataclass
class Line:
    """Words read as one line: `cells` are runs of words split at wide gaps."""

    cells: list[list[Word]]
    top: float
    bottom: float
    height: float
    ruled: bool = False

    def texts(self) -> list[str]:
        return [" ".join(w.text for w in cell) for cell in self.cells]


@dataclass
class Para:
    kind: str  # "text" or "table"
    lines: list[list[str]]  # each line's cells
    opens_block: bool = False  # first of its block: may continue the previous column


def group_rows(words: Iterable[Word]) -> list[list[Word]]:
    """Words in rows from top to bottom, each row left to right. A word joins the row
    above if it overlaps the row's first word vertically by half the smaller height (so a
    superscript stays on its line, and the next line does not)."""
    rows: list[list[Word]] = []
    ref: Word | None = None
    for w in sorted(words, key=lambda w: w.top + w.bottom):
        if ref is not None:
            overlap = min(ref.bottom, w.bottom) - max(ref.top, w.top)
            if overlap >= 0.5 * min(ref.bottom - ref.top, w.bottom - w.top):
                rows[-1].append(w)
                continue
        rows.append([w])
        ref = w
    for row in rows:
        row.sort(key=lambda w: w.x0)
    return rows


def cells_of(words: list[Word]) -> list[list[Word]]:
    """Split a line's words (left to right) where the gap is wider than CELL_GAP heights."""
    height = median(w.bottom - w.top for w in words)
    cells = [[words[0]]]
    for w in words[1:]:
        if w.x0 - cells[-1][-1].x1 > CELL_GAP * height:
            cells.append([w])
        else:
            cells[-1].append(w)
    return cells


def make_line(words: list[Word], ruled: bool = False) -> Line:
    return Line(cells_of(words), min(w.top for w in words), max(w.bottom for w in words),
                median(w.bottom - w.top for w in words), ruled)


def find_gutter(rows: list[list[Word]]) -> tuple[float, float] | None:
    """The empty vertical strip between two columns, as (x0, x1), or None.

    For each 1-point slice of the text width, count the page's strips (`_strips`) where
    it lies in a gap between words at least GUTTER_MIN_WIDTH wide ("open": a space between
    words is narrower) and the words over it ("covered"). A gutter is a run of slices in
    the middle of the page, at least GUTTER_MIN_WIDTH wide, open in at least
    GUTTER_MIN_ROWS strips and in at least half as many as there are words over it
    (full-width titles and tables cross it in a minority of lines; in one-column text wide
    gaps do not line up). The columns must be of like widths (GUTTER_BALANCE) and each
    must hold some wide lines, so that a list of options and their descriptions or a
    two-cell table on a one-column page is not taken for two columns."""
    words = [w for row in rows for w in row]
    if len(rows) < GUTTER_MIN_ROWS or not words:
        return None
    left, right = min(w.x0 for w in words), max(w.x1 for w in words)
    n = int(right - left) + 2
    gaps, cover = [0] * (n + 1), [0] * (n + 1)
    for strip in _strips(words):
        reach = strip[0].x1
        for w in strip:
            if w.x0 - reach >= GUTTER_MIN_WIDTH:  # a wide gap, not a space between words
                gaps[int(reach - left) + 1] += 1
                gaps[int(w.x0 - left)] -= 1
            reach = max(reach, w.x1)
            cover[max(int(w.x0 - left), 0)] += 1
            cover[min(int(w.x1 - left) + 1, n)] -= 1
    open_rows, covered = _prefix(gaps), _prefix(cover)
    lo, hi = int(GUTTER_SPAN[0] * n), int(GUTTER_SPAN[1] * n)
    ok = [lo <= x <= hi and open_rows[x] >= max(GUTTER_MIN_ROWS, 0.5 * covered[x])
          for x in range(n)]
    runs = [(max(open_rows[a:b]), a, b) for a, b in _runs(ok) if b - a >= GUTTER_MIN_WIDTH]
    if not runs:
        return None
    _, a, b = max(runs)  # the run most lines leave open
    g0, g1 = left + a, left + b
    if min(g0 - left, right - g1) < GUTTER_BALANCE * max(g0 - left, right - g1):
        return None
    split = [row for row in rows if not _spans(row, (g0 + g1) / 2)]
    if not (_wide_lines(split, left, g0, True) and _wide_lines(split, g1, right, False)):
        return None
    return g0, g1


def _strips(words: list[Word]) -> list[list[Word]]:
    """Words in horizontal strips of 3/4 of a line's height, by their centres, each left
    to right. Unlike rows, a strip holds both columns' lines even where the columns'
    baselines do not line up (a heading or a figure shifts one column's lines)."""
    height = 0.75 * median(w.bottom - w.top for w in words)
    strips: dict[int, list[Word]] = {}
    for w in words:
        strips.setdefault(int((w.top + w.bottom) / 2 / height), []).append(w)
    return [sorted(strip, key=lambda w: w.x0) for strip in strips.values()]


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    """(start, end) of each run of True in `flags`."""
    runs, start = [], None
    for x, flag in enumerate(flags + [False]):
        if flag and start is None:
            start = x
        elif not flag and start is not None:
            runs.append((start, x))
            start = None
    return runs


def _prefix(diffs: list[int]) -> list[int]:
    total, out = 0, []
    for d in diffs:
        total += d
        out.append(total)
    return out


def _wide_lines(rows: list[list[Word]], x0: float, x1: float, left_side: bool) -> bool:
    """Whether at least two rows fill half of the side [x0, x1] with text."""
    wide = 0
    for row in rows:
        side = [w for w in row if (w.x1 <= x1 if left_side else w.x0 >= x0)]
        if side and side[-1].x1 - side[0].x0 >= 0.5 * (x1 - x0):
            wide += 1
    return wide >= 2


def ruled_regions(boxes: list[Box], gutter: tuple[float, float], text_height: float) -> list[Box]:
    """Ruled areas that cross the gutter: a drawn box or shading across it, or two rules
    across it of the same extent joined by a vertical rule at an end or inside (a table
    grid's row). Rows inside are read across the gutter. A region over FRAME_PART of the
    text height is a page frame and ignored."""
    g0, g1 = gutter
    across = [b for b in boxes if b.x0 < g0 and b.x1 > g1]
    regions = [b for b in across if b.bottom - b.top > 3]
    rules = sorted((b for b in across if b.bottom - b.top <= 3), key=lambda b: b.top)
    verticals = [b for b in boxes if b.x1 - b.x0 <= 3 and b.bottom - b.top > 3]
    for a, b in zip(rules, rules[1:]):
        if abs(a.x0 - b.x0) > ALIGN_TOL or abs(a.x1 - b.x1) > ALIGN_TOL:
            continue
        if any(a.x0 - ALIGN_TOL <= v.x0 <= a.x1 + ALIGN_TOL and v.top <= a.bottom + ALIGN_TOL
               and v.bottom >= b.top - ALIGN_TOL for v in verticals):
            regions.append(Box(min(a.x0, b.x0), max(a.x1, b.x1), a.top, b.bottom))
    return [r for r in regions if r.bottom - r.top < FRAME_PART * text_height]


def order_blocks(rows: list[list[Word]], gutter: tuple[float, float] | None,
                 regions: list[Box] = ()) -> list[list[Line]]:
    """Lines in reading order, in blocks (a column's stretch, or full-width rows)."""
    if gutter is None:
        return [[make_line(row) for row in rows]]
    g0, g1 = gutter
    middle = (g0 + g1) / 2
    blocks: list[list[Line]] = []
    left: list[Line] = []
    right: list[Line] = []
    span: list[Line] = []
    for row in rows:
        centre = (min(w.top for w in row) + max(w.bottom for w in row)) / 2
        ruled = any(r.top <= centre <= r.bottom for r in regions)
        if ruled or _spans(row, middle):
            blocks += [b for b in (left, right) if b]
            left, right = [], []
            span.append(make_line(row, ruled))
            continue
        if span:
            blocks.append(span)
            span = []
        side_l = [w for w in row if (w.x0 + w.x1) / 2 < middle]
        side_r = [w for w in row if (w.x0 + w.x1) / 2 >= middle]
        if side_l:
            left.append(make_line(side_l))
        if side_r:
            right.append(make_line(side_r))
    blocks += [b for b in (left, right, span) if b]
    return blocks


def _spans(row: list[Word], middle: float) -> bool:
    """Whether a row reads across the gutter: a word over its middle, or words on both
    sides of it closer than a gutter (a title's space between words fell there)."""
    before = [w.x1 for w in row if w.x1 <= middle]
    after = [w.x0 for w in row if w.x0 >= middle]
    if len(before) + len(after) < len(row):
        return True
    return bool(before and after) and min(after) - max(before) < GUTTER_MIN_WIDTH


def _aligned(line: Line, other: Line) -> float:
    """Fraction of `line`'s inner cell edges (start, end or centre of every cell but the
    first) that match a cell edge of `other`."""
    inner = line.cells[1:]
    if not inner or len(other.cells) < 2:
        return 0.0
    def edges(cell: list[Word]) -> tuple[float, float, float]:
        return cell[0].x0, cell[-1].x1, (cell[0].x0 + cell[-1].x1) / 2
    theirs = [edges(c) for c in other.cells]
    hits = sum(1 for c in inner
               if any(abs(a - b) <= ALIGN_TOL for e in theirs for a, b in zip(edges(c), e)))
    return hits / len(inner)


#: a list item's marker: a bullet, "1.", "iv)", "(a)"; set off from its text like a cell,
#: but a bulleted list is not a table
_LIST_MARK = re.compile(r"[•◦▪▫‣⁃∙·●○■□*–—-]|\(?(\d{1,3}|[ivxlc]{1,5}|[a-z])[.)]", re.IGNORECASE)


def _table_rows(lines: list[Line]) -> list[bool]:
    flags = []
    for i, line in enumerate(lines):
        if len(line.cells) < 2 or (len(line.cells) == 2 and _LIST_MARK.fullmatch(line.texts()[0])):
            flags.append(False)
            continue
        near = [lines[j] for j in (i - 1, i + 1) if 0 <= j < len(lines)]
        flags.append(line.ruled or any(_aligned(line, o) >= TABLE_ALIGN for o in near))
    return flags


def paragraphs(blocks: list[list[Line]]) -> list[Para]:
    """Blocks cut into paragraphs and tables. A paragraph ends at a vertical gap wider
    than the page's usual gap between lines by 0.4 line heights, or where the line height
    changes by over 15 % (a heading); consecutive table rows make one table."""
    gaps = [b.top - a.bottom for block in blocks for a, b in zip(block, block[1:])]
    usual = max(median(gaps), 0.0) if gaps else 0.0
    out: list[Para] = []
    for block in blocks:
        tables = _table_rows(block)
        prev: Line | None = None
        for line, is_table in zip(block, tables):
            kind = "table" if is_table else "text"
            new = (prev is None or out[-1].kind != kind
                   or (kind == "text" and (
                       line.top - prev.bottom > usual + 0.4 * min(line.height, prev.height)
                       or abs(line.height - prev.height) > 0.15 * max(line.height, prev.height))))
            if new:
                out.append(Para(kind, [], opens_block=prev is None))
            out[-1].lines.append(line.texts())
            prev = line
    return out


_DIGITS = re.compile(r"\d+")


def running_key(text: str) -> str:
    """A margin line's identity across pages: case, spacing and numbers ignored, so
    "Page 3 of 9" and "Page 4 of 9" (or bare page numbers) are the same line."""
    return " ".join(_DIGITS.sub("#", text.lower()).split())


def margin_cells(rows: list[list[Word]], height: float) -> list[tuple[str, list[Word]]]:
    """The cells of the page's margin rows (see `_margin_rows`): where running headers,
    footers and page numbers sit. Returns (zone and key, cell) pairs."""
    found: list[tuple[str, list[Word]]] = []
    for zone, picked in (("top", _margin_rows(rows, height)),
                         ("bottom", _margin_rows(rows[::-1], height, bottom=True))):
        for row in picked:
            for cell in cells_of(row):
                found.append((zone + ":" + running_key(" ".join(w.text for w in cell)), cell))
    return found


def _margin_rows(rows: list[list[Word]], height: float, bottom: bool = False) -> list[list[Word]]:
    """The first rows (last, if `bottom`; `rows` then come reversed) lying in the page's
    outer MARGIN_PART and set off from the body by a gap of at least a line's height: a
    running header is. (Without the gap, a page's first body line, "Paragraph 10. ...",
    would match the next page's "Paragraph 11. ..." once digits are ignored.)"""
    picked = 0
    for i, row in enumerate(rows[:MARGIN_ROWS]):
        outer = (min(w.top for w in row) >= (1 - MARGIN_PART) * height if bottom
                 else max(w.bottom for w in row) <= MARGIN_PART * height)
        if not outer:
            break
        if i + 1 == len(rows):
            picked = i + 1
            break
        nxt = rows[i + 1]
        gap = (min(w.top for w in row) - max(w.bottom for w in nxt) if bottom
               else min(w.top for w in nxt) - max(w.bottom for w in row))
        if gap >= median(w.bottom - w.top for w in row):
            picked = i + 1
    return rows[:picked]


def drop_running(pages: list[tuple[list[list[Word]], float]]) -> list[list[list[Word]]]:
    """Rows of every page without the running headers and footers: margin cells whose key
    repeats on at least two pages and on RUNNING_PART of the pages (most pages, allowing
    for headers that alternate between odd and even pages)."""
    per_page = [margin_cells(rows, height) for rows, height in pages]
    counts: dict[str, int] = {}
    for cells in per_page:
        for key in {k for k, _ in cells}:
            counts[key] = counts.get(key, 0) + 1
    need = max(2.0, RUNNING_PART * len(pages))
    out = []
    for (rows, _), cells in zip(pages, per_page):
        gone = {id(w) for key, cell in cells if counts[key] >= need for w in cell}
        kept = [[w for w in row if id(w) not in gone] for row in rows]
        out.append([row for row in kept if row])
    return out
