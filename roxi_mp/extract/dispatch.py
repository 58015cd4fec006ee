"""Which parser reads which content type: the table the extraction child dispatches by.

`extract_bytes` runs inside the extraction child (roxi_mp.extract.worker), never in the
ingest or the documents role: the parsers (pdfium, libxml2, a zip reader) are where a
hostile file can hang, allocate without bound or crash. Each parser's module is imported
on first use, so importing this module costs nothing; the child imports them all once at
start (`preload`), before it takes its first document.
"""

from __future__ import annotations

import importlib
from typing import Callable

from ..config_sections import ExtractSettings
from . import DOCX, HTML, PDF, TYPE_NAMES, Extracted, ExtractError

#: a parser: (content bytes, the [extract] limits) -> Extracted, or ExtractError
Parser = Callable[[bytes, ExtractSettings], Extracted]
#: the parsers' modules, imported by `preload`
PARSER_MODULES = ("pdf", "html", "docx")


def _pdf(data: bytes, settings: ExtractSettings) -> Extracted:
    from .pdf import extract_pdf
    return extract_pdf(data, max_pages=settings.max_pages)


def _html(data: bytes, settings: ExtractSettings) -> Extracted:
    from .html import extract_html
    return extract_html(data)


def _docx(data: bytes, settings: ExtractSettings) -> Extracted:
    from .docx import extract_docx
    return extract_docx(data, max_unzipped_bytes=settings.max_unzipped_bytes)


#: content type -> its parser. The only other entry ever made is the tests' fake parser,
#: under FAKE_TYPE, by roxi_mp.extract.worker.install_fake (read why there).
PARSERS: dict[str, Parser] = {PDF: _pdf, HTML: _html, DOCX: _docx}


def extract_bytes(data: bytes, content_type: str, settings: ExtractSettings) -> Extracted:
    """The document in `data` as sections, by the parser of `content_type` (one that
    roxi_mp.extract.sniff.resolve_type gave); ExtractError when it holds no text."""
    parser = PARSERS.get(content_type)
    if parser is None:
        raise ExtractError(f"no extractor for {TYPE_NAMES.get(content_type, content_type)}")
    extracted = parser(data, settings)
    # Each parser says why it found nothing ("scanned? OCR is not supported"); this is the
    # net under them, so that no document is ever stored with no text at all.
    if not any(section.text.strip() for section in extracted.sections):
        raise ExtractError("no text found")
    return extracted


def preload() -> None:
    """Import every parser's module now, so that the child pays for imports once, not
    inside a document's time limit. A module that fails to import is left for
    `extract_bytes` to report on each document of its type, not fatal to the others."""
    for module in PARSER_MODULES:
        try:
            importlib.import_module(f"{__package__}.{module}")
        except ImportError:
            pass
