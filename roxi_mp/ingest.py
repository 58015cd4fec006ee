"""Ingest: turn files and directories of .txt/.md/.pdf/.html/.htm/.docx into documents keyed by their path.

A file is a document whose key is its resolved path (or `key`, for one file). Its newest
stored version is compared by content hash before any work: an unchanged file costs one
read to hash it. A changed file is stored as a new version through Store.put_document: it
waits, pending, until indexed while the old version keeps answering, and its chunks whose
text is already embedded reuse those vectors. A file whose content equals a document keyed
by a file path that no longer exists was renamed or moved: that stale key is deleted once
the new one is stored. With `sync`, documents keyed under a directory argument whose file is
gone are deleted too.

Files are read twice, never loaded whole: once in binary to hash them, once as UTF-8 lines
through the chunker into one SQLite transaction, so a file that fails halfway (bad UTF-8,
vanished) leaves nothing behind. Files up to CHUNK_FIRST_BYTES are chunked before the
transaction begins (the write lock embedders claim work under is then held only for the
inserts); larger ones stream their chunks inside it. Problems with one file are reported
and counted, and the rest of the batch goes on: one bad file in a directory of thousands
must not stop an ingest.

PDF, HTML and Word files are read whole (up to extract.max_file_bytes), hashed, and, when
changed, read by the extraction child through one Extractor per ingest (a hostile file
costs its error line: a time limit, a memory limit, a crash of the child); their sections
become chunk rows with the page or heading path of each chunk. What every file holds is
checked against its name first (roxi_mp.extract.sniff): a .pdf holding HTML, or a .txt
holding a PNG, is refused with one line and leaves the store as it was.
"""

from __future__ import annotations

import codecs
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .config_sections import ExtractSettings
from .documents import ChunkRow, chunk_sections, iter_chunk_rows
from .errors import BadInput, NotFound
from .extract import BINARY_TYPES, SUFFIX_TYPES, ExtractError
from .extract.extractor import Extractor
from .extract.sniff import HEAD_BYTES, resolve_type
from .store import Store

#: file name endings ingested when walking a directory
SUFFIXES = (".txt", ".md", ".pdf", ".html", ".htm", ".docx")
#: of those, the ones read by the extraction child (the others are streamed as text)
EXTRACTED_SUFFIXES = tuple(s for s in SUFFIXES if SUFFIX_TYPES[s] in BINARY_TYPES)
#: longest title taken from a document's metadata or first heading, characters
TITLE_CHARS = 200
#: read size for hashing, bytes
READ_BYTES = 1 << 20
#: files up to this size are chunked in memory before their transaction, larger ones streamed
CHUNK_FIRST_BYTES = 8 << 20


@dataclass
class IngestReport:
    """Counts of one ingest, by file outcome, plus the documents it deleted (`removed`)."""

    added: int = 0  # first versions of a key
    replaced: int = 0  # new versions of a key, pending until indexed
    unchanged: int = 0  # same key, same content: nothing done
    empty: int = 0
    chunks: int = 0  # chunks stored
    reused: int = 0  # of those, chunks whose vector will be copied, not embedded
    removed: list[str] = field(default_factory=list)  # keys deleted: renamed files, `sync`
    errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def files(self) -> int:
        return self.added + self.replaced + self.unchanged + self.empty + len(self.errors)

    def as_dict(self) -> dict:
        return {"files": self.files, "added": self.added, "replaced": self.replaced, "unchanged": self.unchanged,
                "empty": self.empty, "chunks": self.chunks, "reused": self.reused, "removed": len(self.removed),
                "removed_keys": list(self.removed), "errors": [{"path": p, "reason": r} for p, r in self.errors]}


def expand(paths: Iterable[Path | str], report: IngestReport) -> list[Path]:
    """Files to ingest: named files as given, directories walked for .txt/.md, sorted."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = [p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()]
            files.extend(sorted(found))
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                report.errors.append((str(path), f"unsupported file type {path.suffix or '(none)'} "
                                                 f"(ingest takes {', '.join(SUFFIXES)})"))
            else:
                files.append(path)
        elif path.exists():
            report.errors.append((str(path), "not a regular file or directory"))
        else:
            report.errors.append((str(path), "no such file or directory"))
    return files


def check_arguments(paths: list[Path | str], *, key: str | None, sync: bool, max_key_chars: int) -> None:
    """BadInput for options that do not fit the paths: `key` names one file's document,
    `sync` applies to directory arguments."""
    if key is not None:
        if len(paths) != 1 or Path(paths[0]).is_dir():
            raise BadInput("--key names one document: give exactly one file")
        if not key.strip():
            raise BadInput("--key is empty")
        if len(key) > max_key_chars:
            raise BadInput(f"--key has {len(key)} characters, over documents.max_key_chars ({max_key_chars})")
    if sync and not any(Path(p).is_dir() for p in paths):
        raise BadInput("--sync applies to directory arguments: give at least one directory")


def ingest_paths(store: Store, paths: Iterable[Path | str], *, chunk_words: int, chunk_overlap: int,
                 max_document_bytes: int, key: str | None = None, sync: bool = False,
                 max_key_chars: int = 1024, on_file: Callable[[Path, str], None] | None = None,
                 progress: Callable[[int, int], None] | None = None, extract: ExtractSettings | None = None,
                 extractor: Extractor | None = None) -> IngestReport:
    """Ingest every file under `paths` (one file's document under `key` if given); with
    `sync`, then delete the documents keyed under each directory argument whose file is
    gone. `on_file(path, outcome)` is called after each file, and `progress(done, total)` in
    files once before the first and after each. PDF, HTML and Word files are read by
    `extractor`, or by one made with the `extract` limits on the first such file and ended
    with the ingest. BadInput (nothing done) for bad options."""
    paths = list(paths)
    check_arguments(paths, key=key, sync=sync, max_key_chars=max_key_chars)
    report = IngestReport()
    files = expand(paths, report)
    settings = extract or ExtractSettings()
    owned = extractor is None and any(p.suffix.lower() in EXTRACTED_SUFFIXES for p in files)
    if owned:
        extractor = Extractor(settings)
    try:
        if progress is not None:
            progress(0, len(files))
        for done, path in enumerate(files, 1):
            outcome = ingest_file(store, path, report, key=key, chunk_words=chunk_words,
                                  chunk_overlap=chunk_overlap, max_document_bytes=max_document_bytes,
                                  extract=settings, extractor=extractor)
            if on_file is not None:
                on_file(path, outcome)
            if progress is not None:
                progress(done, len(files))
    finally:
        if owned:
            extractor.close()
    if sync:
        for directory in dict.fromkeys(Path(p).resolve() for p in paths if Path(p).is_dir()):
            sync_directory(store, directory, report)
    return report


def sync_directory(store: Store, directory: Path, report: IngestReport) -> None:
    """Delete the documents keyed by a path under `directory` whose file no longer exists."""
    for key in store.keys_with_prefix(str(directory) + os.sep):
        if _gone(key) and _of_file(store, key):
            _delete(store, key, report)


def ingest_file(store: Store, path: Path, report: IngestReport, *, chunk_words: int, chunk_overlap: int,
                max_document_bytes: int, key: str | None = None, extract: ExtractSettings | None = None,
                extractor: Extractor | None = None) -> str:
    """Ingest one file into `report` as the newest version of `key` (default: its resolved
    path); returns the outcome: added, replaced, unchanged, empty or error. A PDF, HTML or
    Word file is read by `extractor` (by a worker of its own when None)."""
    resolved = str(path.resolve())
    key = resolved if key is None else key
    try:
        if path.suffix.lower() in EXTRACTED_SUFFIXES:
            settings = extract or ExtractSettings()
            if extractor is None:
                with Extractor(settings) as own:
                    return _ingest_extracted(store, path, report, key=key, settings=settings, extractor=own,
                                             chunk_words=chunk_words, chunk_overlap=chunk_overlap)
            return _ingest_extracted(store, path, report, key=key, settings=settings, extractor=extractor,
                                     chunk_words=chunk_words, chunk_overlap=chunk_overlap)
        _check_text(path)
        size, digest = _hash_file(path)
        if size > max_document_bytes:
            report.errors.append((str(path), f"{size} bytes exceeds store.max_document_bytes "
                                             f"({max_document_bytes})"))
            return "error"
        title = _title(path)
        if store.newest_version(key) == (digest, title):  # before any chunking: the common re-run
            outcome = "unchanged"
        else:
            chunks: Iterable[ChunkRow] = _chunk_stream(path, chunk_words, chunk_overlap)
            if size <= CHUNK_FIRST_BYTES:
                # Chunk before the transaction: the store's write lock, which embedders need to
                # claim work, is then held for the inserts only. A larger file streams inside it.
                chunks = list(chunks)
            outcome = _put(store, report, key=key, digest=digest, source=resolved, title=title, size=size,
                           chunks=chunks)
    except UnicodeDecodeError:
        report.errors.append((str(path), f"not valid UTF-8 (byte {_bad_utf8_offset(path)})"))
        return "error"
    except ExtractError as exc:
        report.errors.append((str(path), str(exc)))
        return "error"
    except OSError as exc:
        report.errors.append((str(path), exc.strerror or str(exc)))
        return "error"
    except _Empty:
        if store.newest_version(key) is None:
            report.empty += 1
            return "empty"
        # A stored document whose file now holds no text: its old text must stop answering.
        outcome = _put(store, report, key=key, digest=digest, source=resolved, title=title, size=size, chunks=())
    if outcome == "unchanged":
        report.unchanged += 1
    _remove_moved(store, key, digest, report)
    return outcome


def _ingest_extracted(store: Store, path: Path, report: IngestReport, *, key: str, settings: ExtractSettings,
                      extractor: Extractor, chunk_words: int, chunk_overlap: int) -> str:
    """A PDF, HTML or Word file: read whole, hashed, checked against its name, and, when
    changed, extracted by the child. ExtractError and OSError go to the caller's report."""
    import hashlib  # here, not at import: libcrypto is 3.6 MB of a process asleep
    size = path.stat().st_size
    if size > settings.max_file_bytes:
        raise ExtractError(f"{size} bytes exceeds extract.max_file_bytes ({settings.max_file_bytes})")
    with open(path, "rb") as fh:
        data = fh.read(settings.max_file_bytes + 1)  # a file growing meanwhile is still bounded
    if len(data) > settings.max_file_bytes:
        raise ExtractError(f"over extract.max_file_bytes ({settings.max_file_bytes}) bytes")
    content_type = resolve_type(data, declared=None, name=path.name)
    digest = hashlib.sha256(data).hexdigest()
    newest = store.newest_version(key)
    # The hash alone decides: the same bytes make the same title and chunks.
    if newest is not None and newest[0] == digest:
        report.unchanged += 1
        outcome = "unchanged"
    else:
        extracted = extractor.extract(data, content_type)
        del data  # the text is what the chunker needs; the file's bytes can go
        chunks = chunk_sections(extracted.sections, words=chunk_words, overlap=chunk_overlap)
        if not chunks:
            raise ExtractError("no text found")
        outcome = _put(store, report, key=key, digest=digest, source=str(path.resolve()),
                       title=_document_title(extracted.title, path), size=size, chunks=chunks,
                       content_type=content_type)
    _remove_moved(store, key, digest, report)
    return outcome


def _put(store: Store, report: IngestReport, *, key: str, digest: str, source: str, title: str, size: int,
         chunks: Iterable[ChunkRow], content_type: str = "text/plain") -> str:
    result = store.put_document(key=key, content_hash=digest, source=source, title=title, size=size,
                                chunks=chunks, content_type=content_type)
    if result.outcome == "added":
        report.added += 1
    elif result.outcome == "replaced":
        report.replaced += 1
    report.chunks += result.chunks
    report.reused += result.reused
    return result.outcome


def _remove_moved(store: Store, key: str, digest: str, report: IngestReport) -> None:
    """Delete the documents with this content whose key is the path of a file that is gone:
    the file was renamed or moved to `key`."""
    for other in dict.fromkeys(store.live_keys_with_hash(digest)):
        if other != key and os.path.isabs(other) and _gone(other) and _of_file(store, other):
            _delete(store, other, report)


def _of_file(store: Store, key: str) -> bool:
    """Every version of `key` was ingested from the file at that path (its source is the
    key): a key a client chose that looks like a path is never taken for a file's."""
    try:
        doc = store.document(key)
    except NotFound:
        return False  # deleted meanwhile
    return all(v["source"] == key for status, v in doc.items() if status != "key")


def _gone(path: str) -> bool:
    """No regular file at `path` any more. A path that cannot be checked (no permission,
    an I/O error) is not gone: a document is never deleted on a doubt."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False


def _delete(store: Store, key: str, report: IngestReport) -> None:
    try:
        store.delete_document(key)
    except NotFound:
        return  # deleted meanwhile by someone else: the same end
    report.removed.append(key)


class _Empty(Exception):
    """Raised from inside the chunk stream so the document's transaction rolls back."""


def _hash_file(path: Path) -> tuple[int, str]:
    import hashlib  # here, not at import: libcrypto is 3.6 MB of a process asleep
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(READ_BYTES):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def _bad_utf8_offset(path: Path) -> int:
    """Offset in the file of the first invalid UTF-8 byte (the text reader only knows its buffer's)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as fh:
        while True:
            block = fh.read(READ_BYTES)
            carried = len(decoder.getstate()[0])  # bytes of a character split across blocks
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                return offset - carried + exc.start
            if not block:
                return offset
            offset += len(block)


def _lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="strict", newline=None) as fh:
        yield from fh


def _chunk_stream(path: Path, words: int, overlap: int) -> Iterator[ChunkRow]:
    n = 0
    markdown = path.suffix.lower() in (".md", ".markdown")
    for row in iter_chunk_rows(_lines(path), words=words, overlap=overlap, markdown=markdown):
        n += 1
        yield row
    if n == 0:
        raise _Empty()


def _check_text(path: Path) -> None:
    """ExtractError when a text file's first bytes say it is not text (a PNG named .txt,
    a PDF named .md); HTML source named .txt is text (resolve_type says why)."""
    with open(path, "rb") as fh:
        head = fh.read(HEAD_BYTES)
    resolve_type(head, declared=None, name=path.name)


def _document_title(title: str | None, path: Path) -> str:
    """The document's own title (metadata, first heading) on one line, else the file name."""
    line = " ".join((title or "").split())[:TITLE_CHARS]
    return line or path.name


def _title(path: Path, *, limit: int = 200) -> str:
    """The first Markdown heading or first non-empty line, else the file name."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for _, line in zip(range(50), fh):
                text = line.strip().lstrip("#").strip()
                if text:
                    return text[:limit]
    except OSError:
        return path.stem  # unreadable here: the ingest itself will report why
    return path.stem


def sample_corpus_dir() -> Path:
    """The bundled rheumatology sample corpus (package data)."""
    return Path(__file__).resolve().parent / "data" / "sample_corpus"


def is_empty_store(store: Store) -> bool:
    return store.conn.execute("SELECT 1 FROM documents LIMIT 1").fetchone() is None

