"""The approximate index file (`vectors.ann`): its format, and whether it fits the vectors file.

Exact search reads every row (~40 ms at 1M x 384 float16). For large stores the indexer
keeps an approximate index (`indexer.index = "hnsw" | "ivf"`) over the first B committed
rows in `vectors.ann`, built by a child process (roxi_mp.ann_build) that the indexer
schedules (roxi_mp.ann_schedule); the query server maps it and searches the rest exactly
(roxi_mp.search). The file is a 64-byte roxi header followed by the faiss index. The header
names the kind, the rows covered, the model tag of the vectors file, and a crc32
fingerprint of sampled rows: an index that does not describe the current vectors file
(after `reembed`, `restore`, or a crash between build and rename) is never used; it is
removed and rebuilt.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import vectors
from .errors import StoreError

MAGIC = b"ROXIANN\x00"
VERSION = 1
KINDS = {"hnsw": 1, "ivf": 2}
#: magic, version, kind, rows, dim, model tag, fingerprint, rows the IVF lists were trained on
_HEADER = struct.Struct("<8sIIQIIIQ")
HEADER_BYTES = 64
#: rows sampled for the fingerprint (first and last always among them)
FINGERPRINT_ROWS = 17

assert _HEADER.size <= HEADER_BYTES


@dataclass(frozen=True)
class AnnHeader:
    kind: str
    rows: int
    dim: int
    model_tag: int
    fingerprint: int
    trained_rows: int = 0

    def pack(self) -> bytes:
        raw = _HEADER.pack(MAGIC, VERSION, KINDS[self.kind], self.rows, self.dim, self.model_tag,
                           self.fingerprint, self.trained_rows)
        return raw.ljust(HEADER_BYTES, b"\x00")


def read_header(path: Path) -> AnnHeader:
    """The header of an index file; StoreError naming the file if it is not one of ours."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as e:
        raise StoreError(f"{path}: cannot read approximate index: {e}") from e
    if len(raw) < HEADER_BYTES:
        raise StoreError(f"{path}: not an approximate index ({len(raw)} bytes)")
    magic, version, kind, rows, dim, tag, fp, trained = _HEADER.unpack_from(raw)
    names = {v: k for k, v in KINDS.items()}
    if magic != MAGIC or version != VERSION or kind not in names:
        raise StoreError(f"{path}: not an approximate index of this version "
                         f"(magic {magic!r}, version {version}, kind {kind})")
    return AnnHeader(names[kind], rows, dim, tag, fp, trained)


def fingerprint(vectors_path: Path, rows: int) -> int:
    """crc32 of up to FINGERPRINT_ROWS rows spread over [0, rows) of the vectors file."""
    head = vectors.read_header(vectors_path)
    picks = sorted({round(i * (rows - 1) / (FINGERPRINT_ROWS - 1)) for i in range(FINGERPRINT_ROWS)}) if rows else []
    crc = zlib.crc32(struct.pack("<QI", rows, head.dim))
    with open(vectors_path, "rb") as f:
        for r in picks:
            crc = zlib.crc32(os.pread(f.fileno(), head.code_size, vectors.HEADER_BYTES + r * head.code_size), crc)
    return crc


def check(ann_path: Path, vectors_path: Path, *, kind: str, rows: int) -> AnnHeader:
    """The header of an index usable for `rows` committed rows; StoreError saying why not."""
    h = read_header(ann_path)
    vh = vectors.read_header(vectors_path)
    if h.kind != kind:
        raise StoreError(f"{ann_path}: holds a {h.kind} index, indexer.index is {kind!r}")
    if h.dim != vh.dim or h.model_tag != vh.model_tag:
        raise StoreError(f"{ann_path}: built for other vectors (dim {h.dim}, model tag {h.model_tag:#010x})")
    if h.rows > rows:
        raise StoreError(f"{ann_path}: covers {h.rows} rows, only {rows} are committed")
    if fingerprint(vectors_path, h.rows) != h.fingerprint:
        raise StoreError(f"{ann_path}: built from other vectors (fingerprint differs)")
    return h


def remove_stale(ann_path: Path, vectors_path: Path, *, kind: str, rows: int) -> str | None:
    """Delete an index (and a leftover .tmp) that cannot serve these vectors; say why."""
    Path(str(ann_path) + ".tmp").unlink(missing_ok=True)
    if not ann_path.exists():
        return None
    try:
        if kind == "exact":
            raise StoreError(f"{ann_path}: indexer.index is 'exact'")
        check(ann_path, vectors_path, kind=kind, rows=rows)
        return None
    except StoreError as exc:
        ann_path.unlink(missing_ok=True)
        return str(exc)


def attach_storage(index: Any, storage: Any) -> None:
    """Give an HNSW index read without storage (IO_FLAG_SKIP_STORAGE) its rows: the vectors
    file's, mapped (search) or copied (an update's build). The index keeps `storage` alive."""
    index.storage = storage
    index.own_fields = False
    index.referenced_objects = [*getattr(index, "referenced_objects", []), storage]
