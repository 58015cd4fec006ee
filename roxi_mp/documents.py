"""Documents from clients: what a put may carry, checked, and turned into chunk rows.

The documents endpoint (roxi_mp.roles.documents) takes a key, content, a content type, a
title and a metadata map from anyone allowed on its socket; this module checks each
against the [documents] limits and turns the content into what `Store.put_document` takes,
so a bad field is a `bad_request` naming it, and never half a document. A put goes in two
steps: `check` does everything cheap at once (the fields, the size, what the bytes are:
sniffed, a claimed type the bytes contradict is refused), and `finish` makes chunk rows
from text (text/plain, text/markdown: decoded here) or from the sections the extraction
child made of a PDF, HTML page or Word document (roxi_mp.extract), which can take
seconds, so the documents role waits for it without blocking. Text becomes chunk rows
(position, text, sha256 of the text, page, heading path) through `chunk_rows`, sections
through `chunk_sections`: the same chunking `roxi ingest` does, so a document cuts into
the same chunks whichever way it came in (and identical chunks reuse their vectors).
Nothing here touches the store or a socket.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from .chunking import iter_tagged_chunks
from .config_sections import DocumentsSettings
from .errors import E_TOO_LARGE, BadInput
from .extract import DOCX, HTML, MARKDOWN, PDF, TEXT, Extracted, Section
from .extract.sniff import resolve_type
from .extract.text import located_lines, section_lines

#: content type of a string put that names none
DEFAULT_CONTENT_TYPE = TEXT
#: lines searched for a default title, as `roxi ingest` does (50)
TITLE_LINES = 50
#: longest default title, characters, as `roxi ingest` makes them (200)
TITLE_CHARS = 200
#: the `source` column of a document that came over the endpoint (a file's is its path)
SOURCE = "put"
#: metadata values a map may hold (bool is an int in Python: listed for the message only)
SCALARS = (str, int, float, bool, type(None))

# C0 controls (NUL, newline, tab, ...), DEL and C1 controls: a key is one printable line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class TooLarge(BadInput):
    """Content over documents.max_document_bytes: the error reply's code is too_large."""

    code = E_TOO_LARGE


def decode_utf8(data: bytes) -> str:
    """Strict UTF-8, or a BadInput naming the offset of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"content is not valid UTF-8 (byte {exc.start}: {exc.reason})") from None


#: content types decoded here, as UTF-8; they may also arrive as a string
TEXT_TYPES = (TEXT, MARKDOWN)
#: content types a put may name: the text ones, and those the extraction child (roxi_mp.extract)
#: makes into sections (BINARY_TYPES), which arrive as bytes only
CONTENT_TYPES = (*TEXT_TYPES, PDF, HTML, DOCX)


@dataclass(frozen=True)
class Checked:
    """A put whose fields passed every check that costs nothing (key, type, title, metadata,
    size, what the bytes are): `text` for a text type, else None and `finish` needs the
    content extracted from `data` (which the documents role does without blocking)."""

    key: str
    content_type: str
    title: str | None  # None: from the document, else the key
    metadata: dict[str, Any] | None
    data: bytes
    text: str | None

    @property
    def needs_extraction(self) -> bool:
        return self.text is None


@dataclass(frozen=True)
class Upload:
    """A checked put, ready for `Store.put_document(**upload.store_fields())`."""

    key: str
    title: str
    content_type: str
    metadata: dict[str, Any] | None
    content_hash: str  # sha256 of the content's bytes, as ingest hashes a file
    size: int  # bytes of content
    chunks: list[ChunkRow]

    def store_fields(self) -> dict[str, Any]:
        return {"key": self.key, "content_hash": self.content_hash, "source": SOURCE, "title": self.title,
                "size": self.size, "chunks": self.chunks, "content_type": self.content_type,
                "metadata": self.metadata}


def prepare(key: Any, content: Any, *, content_type: Any = None, title: Any = None, metadata: Any = None,
            limits: DocumentsSettings, chunk_words: int, chunk_overlap: int,
            extract: Callable[[bytes, str], Extracted] | None = None) -> Upload:
    """`check` then `finish` in one call: `extract(data, content_type)` makes a PDF, HTML or
    DOCX put into sections (a blocking Extractor.extract); without it only text is taken."""
    checked = check(key, content, content_type=content_type, title=title, metadata=metadata, limits=limits)
    extracted = None
    if checked.needs_extraction:
        if extract is None:
            raise BadInput(f"content_type {checked.content_type} is not taken here (text only)")
        extracted = extract(checked.data, checked.content_type)
    return finish(checked, extracted, limits=limits, chunk_words=chunk_words, chunk_overlap=chunk_overlap)


def check(key: Any, content: Any, *, content_type: Any = None, title: Any = None, metadata: Any = None,
          limits: DocumentsSettings) -> Checked:
    """Check every field of a put; BadInput (TooLarge for content over the limit) on the first
    that is wrong. Nothing here decodes more than text or parses a document, so a bad put
    costs next to nothing whatever its size, and never waits for an extraction."""
    key = check_key(key, max_chars=limits.max_key_chars)
    declared = lookup_content_type(content_type)
    meta = check_metadata(metadata, max_entries=limits.max_metadata_entries, max_bytes=limits.max_metadata_bytes)
    title = check_title(title, max_chars=limits.max_title_chars)
    ctype, text, raw = read_content(content, declared, max_bytes=limits.max_document_bytes)
    return Checked(key=key, content_type=ctype, title=title, metadata=meta, data=raw, text=text)


def finish(checked: Checked, extracted: Extracted | None, *, limits: DocumentsSettings, chunk_words: int,
           chunk_overlap: int) -> Upload:
    """The Upload of a checked put: its text (or the sections extracted from it) cut into chunk
    rows, as `roxi ingest` cuts a file; the title is the put's, else the document's, else
    the first line of a text (as ingest takes it), else the key."""
    import hashlib  # here, not at import: libcrypto is 3.6 MB of a process asleep
    limit = min(TITLE_CHARS, limits.max_title_chars)
    if extracted is None:
        if checked.text is None:
            raise ValueError(f"a {checked.content_type} put needs its extracted sections")
        chunks = chunk_rows(checked.text, words=chunk_words, overlap=chunk_overlap,
                            markdown=checked.content_type == MARKDOWN)
        title = checked.title or default_title(checked.text, fallback=checked.key, limit=limit)
    else:
        chunks = chunk_sections(extracted.sections, words=chunk_words, overlap=chunk_overlap)
        found = " ".join((extracted.title or "").split())[:limit]
        title = checked.title or found or checked.key[:limit]
    if not chunks:
        raise BadInput("content holds no text (empty or only whitespace)")
    return Upload(key=checked.key, title=title, content_type=checked.content_type, metadata=checked.metadata,
                  content_hash=hashlib.sha256(checked.data).hexdigest(), size=len(checked.data), chunks=chunks)


# --- the fields --------------------------------------------------------------------------
def check_key(key: Any, *, max_chars: int) -> str:
    if not isinstance(key, str):
        raise BadInput(f"key must be a string, got {type(key).__name__}")
    if not key:
        raise BadInput("key is empty")
    if len(key) > max_chars:
        raise BadInput(f"key of {len(key)} characters exceeds documents.max_key_chars ({max_chars})")
    if (bad := _CONTROL.search(key)) is not None:
        raise BadInput(f"key holds a control character (U+{ord(bad.group()):04X} at {bad.start()})")
    return key


def lookup_content_type(value: Any) -> str | None:
    """The type a put claims ("text/markdown; charset=utf-8" is text/markdown); None: none."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadInput(f"content_type must be a string, got {type(value).__name__}")
    name, *params = (part.strip().lower() for part in value.split(";"))
    if name not in CONTENT_TYPES:
        raise BadInput(f"unknown content_type {value!r} (known: {', '.join(CONTENT_TYPES)})")
    for param in params:
        # Only text is decoded here; a page's charset is the HTML parser's to read.
        if (name in TEXT_TYPES and param.startswith("charset=")
                and param[8:].strip('"') not in ("utf-8", "utf8", "us-ascii")):
            raise BadInput(f"content_type {value!r}: text is taken as UTF-8 only")
    return name


def check_title(title: Any, *, max_chars: int) -> str | None:
    """The title as given, stripped; None (make one from the text) when absent or blank."""
    if title is None:
        return None
    if not isinstance(title, str):
        raise BadInput(f"title must be a string, got {type(title).__name__}")
    if len(title) > max_chars:
        raise BadInput(f"title of {len(title)} characters exceeds documents.max_title_chars ({max_chars})")
    return title.strip() or None


def check_metadata(metadata: Any, *, max_entries: int, max_bytes: int) -> dict[str, Any] | None:
    """A flat map of string keys to str, int, float, bool or None; None when empty."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise BadInput(f"metadata must be a map, got {type(metadata).__name__}")
    if len(metadata) > max_entries:
        raise BadInput(f"metadata has {len(metadata)} entries, over documents.max_metadata_entries ({max_entries})")
    for name, value in metadata.items():
        if not isinstance(name, str):
            raise BadInput(f"metadata keys must be strings, got {type(name).__name__}")
        if not isinstance(value, SCALARS):
            raise BadInput(f"metadata {name!r}: values must be str, int, float, bool or null "
                           f"(a flat map), got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise BadInput(f"metadata {name!r}: {value} is not a finite number")
    size = len(json.dumps(metadata, sort_keys=True, separators=(",", ":")))  # as the store keeps it
    if size > max_bytes:
        raise BadInput(f"metadata of {size} bytes as JSON exceeds documents.max_metadata_bytes ({max_bytes})")
    return metadata or None


def read_content(content: Any, declared: str | None, *, max_bytes: int) -> tuple[str, str | None, bytes]:
    """(content type, text or None, the content's bytes). The size is checked before anything
    is decoded; bytes are sniffed (a claim the bytes contradict is refused: "declared PDF but
    the content is HTML"), a string is text and nothing else."""
    if isinstance(content, str):
        if declared is not None and declared not in TEXT_TYPES:
            raise BadInput(f"content_type {declared} takes bytes, not a string")
        try:
            raw = content.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate: only a local caller can send one
            raise BadInput(f"content is not valid Unicode (character {exc.start})") from None
        _check_size(len(raw), max_bytes)
        return declared or DEFAULT_CONTENT_TYPE, content, raw
    if isinstance(content, (bytes, bytearray, memoryview)):
        raw = bytes(content)
        _check_size(len(raw), max_bytes)
        found = resolve_type(raw, declared=declared, name=None)
        if found not in TEXT_TYPES:
            return found, None, raw  # PDF, HTML or DOCX: sections come from the extraction child
        # Text claimed as Markdown stays Markdown (sniffing only tells text from the rest).
        return declared if declared in TEXT_TYPES else found, decode_utf8(raw), raw
    if content is None:
        raise BadInput("put needs 'content' (a string, or bytes)")
    raise BadInput(f"content must be a string or bytes, got {type(content).__name__}")


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise TooLarge(f"content of {size} bytes exceeds documents.max_document_bytes ({max_bytes})")


# --- text to chunks ------------------------------------------------------------------------
#: what a chunk is stored as: (position, text, sha256 of the text, page, heading path), page
#: and heading being those of the chunk's first word (None where unknown)
ChunkRow = tuple[int, str, str, "int | None", "str | None"]


def chunk_rows(text: str, *, words: int, overlap: int, markdown: bool = False) -> list[ChunkRow]:
    """The chunk rows of `text`, as `roxi ingest` cuts a file: line ends are normalised first
    as a text-mode file read does (\\r\\n and \\r to \\n); Markdown headings give the path."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return list(iter_chunk_rows(_lines(text), words=words, overlap=overlap, markdown=markdown))


def iter_chunk_rows(lines: Iterable[str], *, words: int, overlap: int, markdown: bool = False) -> Iterator[ChunkRow]:
    """The chunk rows of a document given as lines (an open file)."""
    return _rows(located_lines(lines, markdown=markdown), words, overlap)


def chunk_sections(sections: Iterable[Section], *, words: int, overlap: int) -> list[ChunkRow]:
    """The chunk rows of an extracted document (PDF, HTML, Word), each with the page and
    heading path of its first word."""
    return list(_rows(section_lines(sections), words, overlap))


def _heading(where: tuple[int | None, str | None]) -> str | None:
    return where[1]


def _rows(tagged: Iterable[tuple[str, Any]], words: int, overlap: int) -> Iterator[ChunkRow]:
    import hashlib  # here, not at import: libcrypto is 3.6 MB of a process asleep
    # A heading starts a new chunk: a hit is cited under the heading its text is under.
    for chunk in iter_tagged_chunks(tagged, size=words, overlap=overlap, section_of=_heading):
        page, heading = chunk.tag
        yield chunk.position, chunk.text, hashlib.sha256(chunk.text.encode()).hexdigest(), page, heading


def default_title(text: str, *, fallback: str, limit: int = TITLE_CHARS) -> str:
    """The first Markdown heading or first non-empty line (of the first TITLE_LINES), else
    `fallback`: what `roxi ingest` takes from a file."""
    for _, line in zip(range(TITLE_LINES), _lines(text)):
        found = line.strip().lstrip("#").strip()
        if found:
            return found[:limit]
    return fallback[:limit]


def _lines(text: str) -> Iterator[str]:
    # Lazy, unlike str.splitlines: a 16 MiB text is not held twice.
    pos, length = 0, len(text)
    while pos < length:
        end = text.find("\n", pos)
        if end < 0:
            yield text[pos:]
            return
        yield text[pos:end]
        pos = end + 1
