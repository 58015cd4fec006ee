"""Documents as they come (PDF, HTML, Word, text) made into located text.

Extraction turns a document's bytes into `Section`s: blocks of text in reading order, each
with where it came from (a PDF's page, the heading path it sits under in HTML, DOCX or
Markdown). The chunker (roxi_mp.documents.chunk_sections) cuts sections into chunks and
gives each chunk the place of its first word, which hits return and `roxi query` shows.

What a document is comes from its bytes (`sniff`), not only from its name: a file named
.pdf that holds HTML is refused, not parsed as something it is not. The parsers
themselves (pdf.py, html.py, docx.py, text.py) run inside a child process with a time and
memory limit (worker.py), because a hostile or broken file must cost an error line for
that file, never the ingest or the documents endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import BadInput

PDF = "application/pdf"
HTML = "text/html"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
TEXT = "text/plain"
MARKDOWN = "text/markdown"

#: file name endings and the content type each claims
SUFFIX_TYPES: dict[str, str] = {
    ".pdf": PDF, ".html": HTML, ".htm": HTML, ".xhtml": HTML, ".docx": DOCX,
    ".txt": TEXT, ".md": MARKDOWN, ".markdown": MARKDOWN,
}
#: short names used in messages
TYPE_NAMES: dict[str, str] = {PDF: "PDF", HTML: "HTML", DOCX: "Word (.docx)", TEXT: "text", MARKDOWN: "Markdown"}
#: types whose parsers run in the extraction child (text is decoded in process, streamed)
BINARY_TYPES = frozenset({PDF, HTML, DOCX})

Kind = Literal["text", "heading", "table"]


class ExtractError(BadInput):
    """The document cannot be made into text: the message is one line, the reason only
    (the caller names the file or key), e.g. "encrypted; not supported"."""


@dataclass(frozen=True)
class Section:
    """One block in reading order: a paragraph, a heading, or a table (one line per row,
    cells joined by " | "). `page` is 1-based (PDF only); `heading` is the path of the
    headings above the block, outermost first, joined by " > " ("Methods > Dosing"), or
    None before the first heading. A heading's own `heading` includes itself."""

    text: str
    page: int | None = None
    heading: str | None = None
    kind: Kind = "text"


@dataclass(frozen=True)
class Extracted:
    """A document made into sections. `title` comes from the document's metadata or its
    first heading (None: the caller falls back to the file name or key)."""

    content_type: str
    title: str | None
    sections: list[Section] = field(default_factory=list)
    pages: int | None = None  # PDF page count

    def text(self) -> str:
        """The sections' text in order, blank-line separated (what tests compare)."""
        return "\n\n".join(s.text for s in self.sections)
