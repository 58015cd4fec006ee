"""The build child: `python -m roxi_mp.ann_build --rows N` builds or updates `vectors.ann`.

The indexer starts it (roxi_mp.ann_schedule) so that neither its commits nor its memory wait
on a build; it runs niced and dies with its indexer. It covers rows [0, N) and writes
`vectors.ann.tmp`, fsyncs, and renames: readers see the old index or the new one.

- "hnsw": faiss HNSW links only (written with IO_FLAG_SKIP_STORAGE, ~0.3 KB a row at
  M=32). Its storage is the vectors file itself, mapped zero-copy, so the float16 rows are
  not stored twice. Updates add the new rows to the previous graph.
- "ivf": faiss IVF lists with their own float16 copy of the rows, trained on a sample.
  Updates add to the trained lists; it is retrained once the rows have grown 4x.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import vectors
from .ann import HEADER_BYTES, AnnHeader, attach_storage, check, fingerprint
from .errors import BOOT_ERROR, ConfigError, RoxiError, StoreError
from .staging import fsync_path

if TYPE_CHECKING:
    import faiss

    from .config import Config

log = logging.getLogger("roxi.ann")

#: rows converted to float32 and added per faiss call while building. HNSW graphs built in
#: one call are better than those built in several (recall@10 at 100k: 0.968 against 0.931
#: in 64k-row batches), so this is large: the build child's float32 copy is up to
#: BUILD_BATCH x dim x 4 bytes (1.5 GB at 1M x 384), freed when the child exits.
BUILD_BATCH = 1 << 20
#: an IVF index is retrained (not just added to) once rows exceed this many times its training rows
RETRAIN_GROWTH = 4


@dataclass(frozen=True)
class BuildParams:
    kind: str
    hnsw_m: int = 32
    hnsw_ef_construction: int = 40
    ivf_lists: int = 0
    threads: int = 1

    @classmethod
    def from_config(cls, cfg: Config) -> BuildParams:
        i = cfg.indexer
        return cls(kind=i.index, hnsw_m=i.hnsw_m, hnsw_ef_construction=i.hnsw_ef_construction,
                   ivf_lists=i.ivf_lists, threads=i.ann_build_threads)


def ivf_lists_for(rows: int, configured: int = 0) -> int:
    """IVF list count: the configured one, or 4 sqrt(rows), and never more than rows / 39
    (faiss wants ~39 training points per list)."""
    lists = configured or int(4 * math.sqrt(rows))
    return max(1, min(lists, rows // 39, 65_536))


def build(vectors_path: Path, ann_path: Path, params: BuildParams, *, rows: int) -> AnnHeader:
    """Build or update the index over rows [0, rows) and replace `ann_path` atomically."""
    import faiss

    faiss.omp_set_num_threads(params.threads)
    vh = vectors.read_header(vectors_path)
    if rows < 1 or rows > vh.rows:
        raise StoreError(f"{vectors_path}: cannot index {rows} rows, {vh.rows} are published")
    previous = _previous(ann_path, vectors_path, params.kind, rows)
    started = time.monotonic()
    with open(vectors_path, "rb") as f:
        # Unmapped when the last view of it goes (never closed under a live view).
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    codes = np.frombuffer(mm, dtype=np.float16, count=rows * vh.dim,
                          offset=vectors.HEADER_BYTES).reshape(rows, vh.dim)
    if params.kind == "hnsw":
        index, trained = _hnsw(ann_path, params, vh.dim, codes, previous), 0
    else:
        index, trained = _ivf(ann_path, params, vh.dim, codes, previous)
    first = index.ntotal
    for start in range(first, rows, BUILD_BATCH):
        index.add(np.asarray(codes[start:start + BUILD_BATCH], dtype=np.float32))
    header = AnnHeader(params.kind, rows, vh.dim, vh.model_tag, fingerprint(vectors_path, rows), trained)
    _write(index, header, ann_path, skip_storage=params.kind == "hnsw")
    log.info("%s index over %d rows (%d new) in %.1f s", params.kind, rows, rows - first,
             time.monotonic() - started)
    return header


def _previous(ann_path: Path, vectors_path: Path, kind: str, rows: int) -> AnnHeader | None:
    try:
        return check(ann_path, vectors_path, kind=kind, rows=rows)
    except StoreError:
        return None  # missing or unusable: build from scratch


def _read_faiss(ann_path: Path, flags: int) -> Any:
    """The faiss index in an ann file, read into memory (an update modifies it)."""
    import faiss

    with open(ann_path, "rb") as f:
        f.seek(HEADER_BYTES)
        return faiss.read_index(faiss.PyCallbackIOReader(f.read, 1 << 20), flags)


def _hnsw(ann_path: Path, params: BuildParams, dim: int, codes: np.ndarray,
          previous: AnnHeader | None) -> faiss.IndexHNSW:
    import faiss

    if previous is None:
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.train(np.zeros((1, dim), dtype=np.float32))  # fp16 needs no statistics
        index.hnsw.efConstruction = params.hnsw_ef_construction
        return index
    index = _read_faiss(ann_path, faiss.IO_FLAG_SKIP_STORAGE)
    storage = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    storage.add_sa_codes(np.ascontiguousarray(codes[:previous.rows]).view(np.uint8))
    attach_storage(index, storage)
    index.hnsw.efConstruction = params.hnsw_ef_construction
    return index


def _ivf(ann_path: Path, params: BuildParams, dim: int, codes: np.ndarray,
         previous: AnnHeader | None) -> tuple[faiss.IndexIVF, int]:
    import faiss

    rows = len(codes)
    if previous is not None and rows <= RETRAIN_GROWTH * previous.trained_rows:
        return _read_faiss(ann_path, 0), previous.trained_rows
    lists = ivf_lists_for(rows, params.ivf_lists)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFScalarQuantizer(quantizer, dim, lists, faiss.ScalarQuantizer.QT_fp16,
                                          faiss.METRIC_INNER_PRODUCT)
    sample = np.asarray(codes[::max(1, rows // (64 * lists))][:64 * lists], dtype=np.float32)
    index.cp.niter = 20
    index.train(sample)
    return index, rows


def _write(index: Any, header: AnnHeader, ann_path: Path, *, skip_storage: bool) -> None:
    import faiss

    tmp = Path(str(ann_path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.pack())
        faiss.write_index(index, faiss.PyCallbackIOWriter(f.write), faiss.IO_FLAG_SKIP_STORAGE if skip_storage else 0)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ann_path)
    fsync_path(ann_path.parent)


def _current_vectors(cfg: Config) -> Path:
    """The vectors file the store's meta names (a compaction moves it to the next epoch)."""
    from .store import Store

    if not cfg.db_path.exists():  # vectors without a store (tests, tools): the first epoch's file
        return cfg.vectors_path
    with Store.open(cfg, migrate=False) as store:
        return cfg.vectors_file(store.vectors_epoch())


def main(argv: list[str] | None = None) -> int:
    """`python -m roxi_mp.ann_build --rows N [--vectors PATH] [--data-dir D] [--config C]`: one
    build over the vectors file PATH (by default the store's current one), then exit."""
    from . import config as config_mod
    from .process import child_parser, die_with_parent
    from .roles.base import setup_logging

    parser = child_parser("roxi_mp.ann_build")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--vectors", default=None, help="the vectors file (default: the current epoch's)")
    args = parser.parse_args(argv)
    die_with_parent()  # an indexer killed mid-build takes its build with it
    os.nice(10)  # a background build gives way to queries and embedding
    setup_logging("ann-build")
    try:
        cfg = config_mod.load(args.config, data_dir=args.data_dir)
        build(Path(args.vectors) if args.vectors else _current_vectors(cfg), cfg.ann_path,
              BuildParams.from_config(cfg), rows=args.rows)
    except ConfigError as exc:
        print(f"roxi: index build: {exc}", file=sys.stderr)
        return BOOT_ERROR
    except RoxiError as exc:
        log.error("index build failed: %s", exc)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
