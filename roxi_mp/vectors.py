"""The vectors file: the append-only store of float16 embedding rows, one per chunk.

Row r belongs to the chunk whose `row = r` in SQLite. The file is a valid faiss
`IndexScalarQuantizer(d, QT_fp16, METRIC_INNER_PRODUCT)` index file: an 81-byte header,
then the row-major float16 matrix, so the query server maps it without copying. Our
identity lives in two int64 fields faiss writes as 1<<20 and ignores on read: offset 16
holds the magic b"ROXIVEC\\0", offset 24 the format version and the model tag (uint32
each); the full model id lives in SQLite meta. The indexer (`VectorWriter`) appends rows,
fsyncs, commits SQLite, then `publish`es the row count in the header; after a crash,
`recover` cuts the file back to SQLite's committed rows. Readers (`open_index`) never
trust the header alone: they expose min(header rows, rows the codes length covers, rows
the file holds, rows the caller knows are committed).
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from roxi_mp.errors import BadInput, ModelMismatch, StoreError

if TYPE_CHECKING:  # numpy is imported where rows become arrays: the supervisor, which only
    import faiss  # reads HEADER_BYTES and headers, never needs it (deep sleep floors, issue 22)
    import numpy as np

#: size of the faiss IxSQ header; the float16 rows start here
HEADER_BYTES = 81
#: our layout version, stored at offset 24; bump it when the layout changes
FORMAT_VERSION = 1
#: identity written into faiss's first ignored "dummy" field (offset 16)
MAGIC = b"ROXIVEC\x00"
#: faiss `ScalarQuantizer.QT_fp16`; the unit tests pin it against faiss itself
QT_FP16 = 4
#: faiss `METRIC_INNER_PRODUCT`
METRIC_IP = 0
#: the header as faiss writes it for IxSQ: fourcc, d, ntotal, dummy (magic), dummy
#: (version, model tag), is_trained, metric, qtype, rangestat, rangestat_arg, d,
#: code_size, trained length, codes length
_HEADER = struct.Struct("<4sIq8sIIBiiifQQQQ")
#: offsets of the two fields `publish` patches
_NTOTAL_AT = 8
_CODES_AT = 73

assert _HEADER.size == HEADER_BYTES


def model_tag(model_id: str) -> int:
    """The 32-bit tag of a model id stored in the header."""
    return zlib.crc32(model_id.encode("utf-8"))


@dataclass(frozen=True)
class Header:
    """The header fields roxi cares about; `rows` is faiss's ntotal."""

    dim: int
    rows: int
    codes_bytes: int
    version: int
    model_tag: int

    @property
    def code_size(self) -> int:
        return 2 * self.dim


def _pack_header(*, dim: int, rows: int, tag: int) -> bytes:
    return _HEADER.pack(b"IxSQ", dim, rows, MAGIC, FORMAT_VERSION, tag, 1, METRIC_IP,
                        QT_FP16, 0, 0.0, dim, 2 * dim, 0, rows * 2 * dim)


def _parse_header(raw: bytes, path: Path) -> Header:
    if len(raw) < HEADER_BYTES:
        raise StoreError(f"{path}: not a vectors file "
                         f"({len(raw)} bytes, the header needs {HEADER_BYTES})")
    (fourcc, dim, ntotal, magic, version, tag, trained, metric, qtype, _rangestat, _arg,
     dim2, code_size, trained_len, codes_bytes) = _HEADER.unpack_from(raw)
    problems = [
        (fourcc == b"IxSQ", f"fourcc {fourcc!r} is not b'IxSQ'"),
        (magic == MAGIC, f"magic {magic!r} is not {MAGIC!r}"),
        (version == FORMAT_VERSION, f"format version {version}, expected {FORMAT_VERSION}"),
        (qtype == QT_FP16 and trained_len == 0, f"quantizer type {qtype} is not fp16"),
        (metric == METRIC_IP, f"metric {metric} is not inner product"),
        (trained == 1, "index is not marked trained"),
        (dim > 0 and dim2 == dim and code_size == 2 * dim,
         f"dimension fields disagree (d={dim}, {dim2}, code_size={code_size})"),
        (ntotal >= 0 and codes_bytes % max(code_size, 1) == 0,
         f"row fields are corrupt (ntotal={ntotal}, codes bytes={codes_bytes})"),
    ]
    for ok, why in problems:
        if not ok:
            raise StoreError(f"{path}: corrupt vectors file: {why}")
    return Header(dim=dim, rows=ntotal, codes_bytes=codes_bytes, version=version, model_tag=tag)


def read_header(path: Path) -> Header:
    """Read and validate the header; StoreError naming `path` on anything wrong."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as e:
        raise StoreError(f"{path}: cannot read vectors file: {e}") from e
    return _parse_header(raw, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    # pwrite may write less than asked (signals, > 2 GiB on Linux).
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


class VectorWriter:
    """Single writer (the indexer). Never shares its file handle."""

    def __init__(self, path: Path, *, dim: int, model_id: str) -> None:
        self.path = Path(path)
        self.dim = dim
        self._code_size = 2 * dim
        tag = model_tag(model_id)
        if dim <= 0:
            raise BadInput(f"dim must be > 0, got {dim}")
        if not self.path.exists():
            self._create(tag)
        header = read_header(self.path)
        if header.dim != dim:
            raise ModelMismatch(f"{self.path}: file holds {header.dim}-dim vectors, "
                                f"model {model_id!r} makes {dim}-dim vectors")
        if header.model_tag != tag:
            raise ModelMismatch(f"{self.path}: file was written by model tag "
                                f"{header.model_tag:#010x}, model {model_id!r} has tag {tag:#010x}")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        # Rows past the published count may exist after a crash; recover() decides.
        self._rows = (os.fstat(self._fd).st_size - HEADER_BYTES) // self._code_size
        self._published = min(header.rows, header.codes_bytes // self._code_size)

    def _create(self, tag: int) -> None:
        # Build aside and rename, so a crash never leaves a file with half a header.
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(_pack_header(dim=self.dim, rows=0, tag=tag))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path)

    @property
    def rows(self) -> int:
        """Rows appended so far, including ones not yet published."""
        return self._rows

    def recover(self, committed_rows: int) -> int:
        """Cut the file back to SQLite's committed rows; return how many rows were dropped."""
        if committed_rows < 0:
            raise BadInput(f"committed_rows must be >= 0, got {committed_rows}")
        if self._rows < committed_rows:
            raise StoreError(f"{self.path}: holds {self._rows} rows but SQLite committed "
                             f"{committed_rows}: vectors were lost")
        dropped = self._rows - committed_rows
        self.publish(committed_rows)
        os.ftruncate(self._fd, HEADER_BYTES + committed_rows * self._code_size)
        os.fsync(self._fd)
        self._rows = committed_rows
        return dropped

    def append(self, matrix: np.ndarray) -> int:
        """Write rows after the last one (header untouched); return the first row number."""
        import numpy as np
        m = np.asarray(matrix)
        if m.ndim != 2 or m.shape[1] != self.dim or not np.issubdtype(m.dtype, np.floating):
            raise BadInput(f"expected a float matrix of shape (n, {self.dim}), "
                           f"got {m.dtype} {m.shape}")
        with np.errstate(over="ignore"):
            codes = np.ascontiguousarray(m, dtype="<f2")
        # Checked after the cast: values beyond float16's range (65504) become inf.
        if not np.isfinite(codes).all():
            raise BadInput("vectors contain NaN or inf (or values beyond float16 range)")
        first = self._rows
        _pwrite_all(self._fd, memoryview(codes.view(np.uint8).reshape(-1)),
                    HEADER_BYTES + first * self._code_size)
        self._rows += len(codes)
        return first

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """The float16 vectors of `rows` (each below `self.rows`), as an (n, dim) matrix:
        the indexer copies a vector it already holds instead of embedding its text again."""
        import numpy as np
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self._rows):
            raise StoreError(f"{self.path}: rows {rows.min()}..{rows.max()} are not all among its {self._rows}")
        out = np.empty((len(rows), self.dim), dtype="<f2")
        for i, row in enumerate(rows.tolist()):
            raw = os.pread(self._fd, self._code_size, HEADER_BYTES + row * self._code_size)
            if len(raw) != self._code_size:
                raise StoreError(f"{self.path}: short read of row {row}")
            out[i] = np.frombuffer(raw, dtype="<f2")
        return out

    def sync(self) -> None:
        """Make appended rows durable: the commit protocol's point before SQLite commits."""
        os.fsync(self._fd)

    def publish(self, rows: int) -> None:
        """Let readers see `rows` rows; call after SQLite committed them."""
        if not 0 <= rows <= self._rows:
            raise StoreError(f"{self.path}: cannot publish {rows} rows, {self._rows} appended")
        ntotal = struct.pack("<q", rows)
        codes = struct.pack("<Q", rows * self._code_size)
        # Readers may read the header between the two writes and take the smaller of the
        # two counts, so write the growing field last and the shrinking field first.
        order = [(codes, _CODES_AT), (ntotal, _NTOTAL_AT)]
        if rows < self._published:
            order.reverse()
        for data, offset in order:
            os.pwrite(self._fd, data, offset)
        # No fsync: a header lost in a crash is rewritten by recover() from SQLite's
        # committed row count when the indexer restarts.
        self._published = rows

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> VectorWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def open_index(path: Path, *, rows: int | None = None, start: int = 0,
               willneed: bool = False) -> faiss.IndexScalarQuantizer:
    """Map rows [start, rows) zero-copy as a faiss index, clamped to the rows known complete.

    `rows` is the committed row count the caller knows from SQLite or the indexer; the
    index's row i is file row start + i. The mapping lives as long as the returned object
    (kept in `referenced_objects`); keep that object, not a `downcast_index` copy of it.
    `willneed` asks the kernel to read the rows ahead (asynchronously) so the first scan
    does not fault them in page by page.
    """
    import faiss  # lazily: the indexer only writes and need not load faiss
    import numpy as np

    path = Path(path)
    if rows is not None and rows < 0:
        raise BadInput(f"rows must be >= 0, got {rows}")
    if start < 0:
        raise BadInput(f"start must be >= 0, got {start}")
    header = read_header(path)  # short or foreign files fail here, before mapping
    data_at = HEADER_BYTES + start * header.code_size
    # The mapping starts on the page holding the 81 bytes before row `start`: faiss reads
    # a header followed by the rows, and that is where we write one.
    map_from = (data_at - HEADER_BYTES) // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= map_from:
            return _empty_index(header.dim)
        # Private mapping: we write the header below and only that page gets copied; the
        # rows stay shared with the page cache.
        mm = mmap.mmap(f.fileno(), size - map_from, offset=map_from, flags=mmap.MAP_PRIVATE,
                       prot=mmap.PROT_READ | mmap.PROT_WRITE)
        # Parse the header again, after mapping: it may have changed since read_header.
        header = _parse_header(os.pread(f.fileno(), HEADER_BYTES, 0), path)
    visible = min(header.rows, header.codes_bytes // header.code_size, (size - HEADER_BYTES) // header.code_size)
    if rows is not None:
        visible = min(visible, rows)
    count = max(0, visible - start)
    # faiss refuses a header whose ntotal and codes length disagree (which is what a
    # reader racing publish() sees) and one claiming more codes than the file has, so
    # hand it a consistent header rather than the file's own.
    at = data_at - HEADER_BYTES - map_from
    mm[at:at + HEADER_BYTES] = _pack_header(dim=header.dim, rows=count, tag=header.model_tag)
    length = HEADER_BYTES + count * header.code_size
    if willneed and hasattr(mm, "madvise") and hasattr(mmap, "MADV_WILLNEED"):
        mm.madvise(mmap.MADV_WILLNEED, 0, at + length)
    buf = np.frombuffer(mm, dtype=np.uint8)[at:at + length]
    try:
        index = faiss.read_index(faiss.ZeroCopyIOReader(faiss.swig_ptr(buf), length), 0)
    except RuntimeError as e:
        raise StoreError(f"{path}: faiss cannot read the vectors file: {e}") from e
    index.referenced_objects = [buf]
    return index


def _empty_index(dim: int) -> faiss.IndexScalarQuantizer:
    import faiss

    return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)


def preload(path: Path, *, chunk_bytes: int = 8 << 20) -> int:
    """Read the file sequentially to warm the page cache; return the bytes read.

    A cold first query otherwise faults the mapping in page by page: with faiss's own
    (MADV_RANDOM) mapping a 1M-row file took 13-15 s cold against 1.6 s after one
    sequential read. Keeps no mapping.
    """
    total = 0
    buf = bytearray(chunk_bytes)
    with open(path, "rb", buffering=0) as f:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while n := f.readinto(buf):
            total += n
    return total
