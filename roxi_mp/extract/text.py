"""Plain text and Markdown: lines tagged with where they are, for the chunker.

Text files are not loaded whole (a 50 MB file streams through the chunker line by line),
so the heading path of Markdown is tracked as the lines go by: an ATX heading ("## Dosing")
replaces every heading at its level and below, and lines inside fenced code blocks are
never headings. Plain text has no headings: every line's place is unknown (None, None).
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator

from . import Section

#: (page, heading path) of a line; what `iter_tagged_chunks` carries to each chunk
Where = tuple[int | None, str | None]

_HEADING = re.compile(r" {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
#: longest heading kept in a path, characters (a "heading" of a whole paragraph is cut)
HEADING_CHARS = 200
#: separator of a heading path
PATH_SEP = " > "


def located_lines(lines: Iterable[str], *, markdown: bool) -> Iterator[tuple[str, Where]]:
    """(line, (None, heading path)) for each line (line ends stripped)."""
    if not markdown:
        for line in lines:
            yield line.rstrip("\r\n"), (None, None)
        return
    path: list[tuple[int, str]] = []  # (level, text) of the headings above
    where: Where = (None, None)
    fence = ""
    for line in lines:
        line = line.rstrip("\r\n")
        if line[:1] in (" ", "`", "~") and (opened := _FENCE.match(line)):
            marker = opened.group(1)
            if not fence:
                fence = marker
            elif marker[0] == fence[0] and len(marker) >= len(fence):
                fence = ""
        elif not fence and line[:1] in (" ", "#") and (found := _HEADING.match(line)):
            level, text = len(found.group(1)), found.group(2).strip()[:HEADING_CHARS]
            while path and path[-1][0] >= level:
                path.pop()
            if text:
                path.append((level, text))
            where = (None, PATH_SEP.join(t for _, t in path) or None)
        yield line, where


def section_lines(sections: Iterable[Section]) -> Iterator[tuple[str, Where]]:
    """Sections as tagged lines: a blank line before each block (a window may end there),
    except right after a heading (a window should not end between a heading and its text)."""
    after_heading = True  # nothing to separate before the first block
    for section in sections:
        where: Where = (section.page, section.heading)
        if not after_heading:
            yield "", where
        for line in section.text.split("\n"):
            yield line, where
        after_heading = section.kind == "heading"
