"""What a document is, from its bytes: PDF, HTML, Word (.docx), binary or text.

A file's name (or a put's content_type) only claims a type; the first bytes decide. A claim
the bytes contradict is refused with one line ("named .pdf but the content is HTML")
rather than handed to a parser that would fail on it in a less telling way, or, worse,
index a PNG as text. Everything here is a few byte comparisons on the head of the content:
no parsing, no decompression, so the parent process (ingest, the documents role) can run it
on hostile bytes before anything reaches the extraction child.
"""

from __future__ import annotations

import re

from . import DOCX, HTML, MARKDOWN, PDF, SUFFIX_TYPES, TEXT, TYPE_NAMES, ExtractError

#: bytes of a text file read to sniff it (NUL bytes are looked for in all of them)
HEAD_BYTES = 8192
#: PDF and HTML signatures are looked for within this many bytes (what browsers and
#: pdfium tolerate in front of them: a BOM, whitespace, a comment, mail-client garbage)
SIGNATURE_BYTES = 1024

ZIP_MAGIC = b"PK\x03\x04"
#: the part every Word document's archive holds (its name is stored uncompressed)
DOCX_PART = b"word/document.xml"
#: end-of-central-directory record: when the head holds it, the head is the whole archive
ZIP_END = b"PK\x05\x06"

#: magic bytes -> what the content is, for "binary content (<what>), not text"
BINARY_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"II*\x00", "TIFF image"),
    (b"MM\x00*", "TIFF image"),
    (b"\x1f\x8b", "gzip archive"),
    (b"BZh", "bzip2 archive"),
    (b"\xfd7zXZ\x00", "xz archive"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
    (b"Rar!\x1a\x07", "RAR archive"),
    (ZIP_MAGIC, "ZIP archive"),
    (b"PK\x05\x06", "ZIP archive"),
    (b"\x7fELF", "ELF executable"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "old Office (.doc/.xls) file"),
)

_BOMS = (b"\xef\xbb\xbf",)
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# An HTML document's first tag, after whitespace and comments: a tag name ends at a space,
# '>' or '/', so <header> is not <head>.
_HTML_START = re.compile(rb"(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*(?:<!doctype\s+html|<(?:html|head|body)[\s>/])",
                         re.IGNORECASE | re.DOTALL)


def sniff(data: bytes) -> str | None:
    """PDF, DOCX or HTML when the bytes say so, else None (text, or binary: `binary_kind`).

    `data` is the content or its head (HEAD_BYTES are enough). A ZIP archive is DOCX only
    when the Word part's name shows in the bytes given: with only the head of a large
    archive, that may not be known (None; `resolve_type` trusts a .docx claim on a ZIP).
    """
    if _starts_pdf(data):
        return PDF
    if data.startswith(ZIP_MAGIC):
        return DOCX if DOCX_PART in data else None
    if _is_html(data[:SIGNATURE_BYTES]):
        return HTML
    # Junk before the signature (pdfium reads past it), once no HTML start matched: a page
    # that mentions "%PDF-" near its top is still the HTML page it starts as.
    if b"%PDF-" in data[:SIGNATURE_BYTES]:
        return PDF
    return None


def binary_kind(data: bytes) -> str | None:
    """What binary content this is ("PNG image", "NUL bytes"), or None for text."""
    for magic, what in BINARY_MAGIC:
        if data.startswith(magic):
            return what
    if data.startswith(_UTF16_BOMS):
        return None  # text, with NULs in it: the UTF-8 decoder says what is wrong with it
    if b"\x00" in data[:HEAD_BYTES]:
        return "NUL bytes"
    return None


def resolve_type(head: bytes, *, declared: str | None, name: str | None) -> str:
    """The content type to read `head`'s document as (one of TYPE_NAMES), or ExtractError
    with one line when the bytes contradict what `declared` (a put's content_type, which
    wins) or `name`'s suffix claims. `head` is the content or at least its first HEAD_BYTES."""
    claim, claimant = _claim(declared, name)
    found = sniff(head)
    if claim is None:
        if found is not None:
            return found
        _refuse_binary(head)
        return TEXT
    if claim in (TEXT, MARKDOWN):
        # HTML source in a .txt or .md file is taken as the text it is (Markdown may even
        # hold HTML by design): the user named it text, and indexing its markup is harmless.
        if found == DOCX or (found == PDF and _starts_pdf(head)):
            # (a text that only mentions "%PDF-" near its top stays text)
            raise ExtractError(f"{claimant} but the content is {TYPE_NAMES[found]}")
        _refuse_binary(head)
        return claim
    if found == claim:
        return claim
    if claim == DOCX and head.startswith(ZIP_MAGIC):
        if ZIP_END in head[-(1 << 16) - 22:]:  # the whole archive is here, without a Word part
            raise ExtractError("a ZIP archive, not a Word document")
        return DOCX  # only the head of a large archive: the DOCX parser looks at its entries
    if found is not None:
        raise ExtractError(f"{claimant} but the content is {TYPE_NAMES[found]}")
    what = binary_kind(head)
    if what is not None:
        raise ExtractError(f"{claimant} but the content is binary ({what})")
    if claim == HTML:
        # A fragment with no <html> or doctype ("<p>...") is still HTML, and plain text read
        # as HTML loses nothing: only binary, PDF and Word content contradict an HTML claim.
        return HTML
    raise ExtractError(f"{claimant} but the content is not {TYPE_NAMES[claim]}")


def _claim(declared: str | None, name: str | None) -> tuple[str | None, str]:
    """(claimed content type, how the message names the claim) from the put or the name."""
    if declared is not None:
        ctype = declared.split(";", 1)[0].strip().lower()
        if ctype not in TYPE_NAMES:
            raise ExtractError(f"unknown content type {declared!r} (known: {', '.join(TYPE_NAMES)})")
        return ctype, f"sent as {ctype}"
    if name is not None:
        dot = name.rfind(".")
        suffix = name[dot:].lower() if dot > max(name.rfind("/"), 0) else ""
        if suffix in SUFFIX_TYPES:
            return SUFFIX_TYPES[suffix], f"named {suffix}"
    return None, ""


def _refuse_binary(head: bytes) -> None:
    what = binary_kind(head)
    if what is not None:
        raise ExtractError(f"binary content ({what}), not text")


def _starts_pdf(data: bytes) -> bool:
    return data[:SIGNATURE_BYTES].lstrip().startswith(b"%PDF-")


def _is_html(head: bytes) -> bool:
    for bom in _BOMS:
        if head.startswith(bom):
            head = head[len(bom):]
    return _HTML_START.match(head.lstrip()) is not None

