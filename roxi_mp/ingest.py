"""Ingest: turn files and directories of .txt/.md into documents and pending chunks.

Files are read twice, never loaded whole: once in binary to hash them (an identical
document already stored is skipped before any work), once as UTF-8 lines through the
chunker into one SQLite transaction, so a file that fails halfway (bad UTF-8, vanished)
leaves nothing behind. Files up to CHUNK_FIRST_BYTES are chunked before the transaction
begins (the write lock embedders claim work under is then held only for the inserts);
larger ones stream their chunks inside it. Problems with one file are reported and counted, and the rest of
the batch goes on: one bad file in a directory of thousands must not stop an ingest.
"""

from __future__ import annotations

import codecs
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .chunking import iter_chunks_from_lines
from .store import Store

#: file name endings ingested when walking a directory
SUFFIXES = (".txt", ".md")
#: read size for hashing, bytes
READ_BYTES = 1 << 20
#: files up to this size are chunked in memory before their transaction, larger ones streamed
CHUNK_FIRST_BYTES = 8 << 20


@dataclass
class IngestReport:
    added: int = 0
    duplicates: int = 0
    empty: int = 0
    chunks: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def files(self) -> int:
        return self.added + self.duplicates + self.empty + len(self.errors)

    def as_dict(self) -> dict:
        return {"files": self.files, "added": self.added, "duplicates": self.duplicates,
                "empty": self.empty, "chunks": self.chunks,
                "errors": [{"path": p, "reason": r} for p, r in self.errors]}


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


def ingest_paths(store: Store, paths: Iterable[Path | str], *, chunk_words: int, chunk_overlap: int,
                 max_document_bytes: int, on_file: Callable[[Path, str], None] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> IngestReport:
    """Ingest every file under `paths`; `on_file(path, outcome)` is called after each, and
    `progress(done, total)` in files once before the first and after each."""
    report = IngestReport()
    files = expand(paths, report)
    if progress is not None:
        progress(0, len(files))
    for done, path in enumerate(files, 1):
        outcome = ingest_file(store, path, report, chunk_words=chunk_words,
                              chunk_overlap=chunk_overlap, max_document_bytes=max_document_bytes)
        if on_file is not None:
            on_file(path, outcome)
        if progress is not None:
            progress(done, len(files))
    return report


def ingest_file(store: Store, path: Path, report: IngestReport, *, chunk_words: int,
                chunk_overlap: int, max_document_bytes: int) -> str:
    """Ingest one file into `report`; returns the outcome: added, duplicate, empty or error."""
    try:
        size, digest = _hash_file(path)
        if size > max_document_bytes:
            report.errors.append((str(path), f"{size} bytes exceeds store.max_document_bytes "
                                             f"({max_document_bytes})"))
            return "error"
        if store.has_document(digest):
            report.duplicates += 1
            return "duplicate"
        title = _title(path)
        chunks: Iterable[tuple[int, str, str]] = _chunk_stream(path, chunk_words, chunk_overlap)
        if size <= CHUNK_FIRST_BYTES:
            # Chunk before the transaction: the store's write lock, which embedders need to
            # claim work, is then held for the inserts only. A larger file streams inside it.
            chunks = list(chunks)
        doc_id = store.add_document(content_hash=digest, source=str(path.resolve()), title=title,
                                    size=size, chunks=chunks)
    except UnicodeDecodeError:
        report.errors.append((str(path), f"not valid UTF-8 (byte {_bad_utf8_offset(path)})"))
        return "error"
    except OSError as exc:
        report.errors.append((str(path), exc.strerror or str(exc)))
        return "error"
    except _Empty:
        report.empty += 1
        return "empty"
    if doc_id is None:
        report.duplicates += 1
        return "duplicate"
    report.added += 1
    report.chunks += store.conn.execute("SELECT n_chunks FROM documents WHERE id=?", (doc_id,)).fetchone()[0]
    return "added"


class _Empty(Exception):
    """Raised from inside the chunk stream so the document's transaction rolls back."""


def _hash_file(path: Path) -> tuple[int, str]:
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


def _chunk_stream(path: Path, words: int, overlap: int) -> Iterator[tuple[int, str, str]]:
    n = 0
    for chunk in iter_chunks_from_lines(_lines(path), size=words, overlap=overlap):
        n += 1
        yield chunk.position, chunk.text, hashlib.sha256(chunk.text.encode()).hexdigest()
    if n == 0:
        raise _Empty()


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

