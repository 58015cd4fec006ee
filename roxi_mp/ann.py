"""The approximate index (`indexer.index = "hnsw" | "ivf"`): built beside the vectors file.

Exact search reads every row (~40 ms at 1M x 384 float16). For large stores the indexer
keeps an approximate index over the first B committed rows in `vectors.ann`, built in a
child process (`python -m roxi_mp.ann`) so that neither the indexer's commits nor its
memory wait on it. The query server maps it and searches rows [B, N) exactly, merging the
two top-k lists by score, so a committed row is findable at once, whatever the index.

- "hnsw": faiss HNSW links only (written with IO_FLAG_SKIP_STORAGE, ~0.3 KB a row at
  M=32). Its storage is the vectors file itself, mapped zero-copy, so the float16 rows are
  not stored twice. Updates add the new rows to the previous graph.
- "ivf": faiss IVF lists with their own float16 copy of the rows, trained on a sample.
  Updates add to the trained lists; it is retrained once the rows have grown 4x.

The file is a 64-byte roxi header followed by the faiss index. The header names the kind,
the rows covered, the model tag of the vectors file, and a crc32 fingerprint of sampled
rows: an index that does not describe the current vectors file (after `reembed`,
`restore`, or a crash between build and rename) is never used; it is rebuilt. A build
writes `vectors.ann.tmp`, fsyncs, and renames: readers see the old index or the new one.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import vectors
from .errors import BOOT_ERROR, ConfigError, RoxiError, StoreError
from .staging import fsync_path

if TYPE_CHECKING:
    import faiss

    from .config import Config

log = logging.getLogger("roxi.ann")

MAGIC = b"ROXIANN\x00"
VERSION = 1
KINDS = {"hnsw": 1, "ivf": 2}
#: magic, version, kind, rows, dim, model tag, fingerprint, rows the IVF lists were trained on
_HEADER = struct.Struct("<8sIIQIIIQ")
HEADER_BYTES = 64
#: rows sampled for the fingerprint (first and last always among them)
FINGERPRINT_ROWS = 17
#: rows converted to float32 and added per faiss call while building. HNSW graphs built in
#: one call are better than those built in several (recall@10 at 100k: 0.968 against 0.931
#: in 64k-row batches), so this is large: the build child's float32 copy is up to
#: BUILD_BATCH x dim x 4 bytes (1.5 GB at 1M x 384), freed when the child exits.
BUILD_BATCH = 1 << 20
#: an IVF index is retrained (not just added to) once rows exceed this many times its training rows
RETRAIN_GROWTH = 4
#: an update is due once the uncovered rows reach this fraction of the covered ones
UPDATE_FRACTION = 0.1

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


# --- building (in the child process) -------------------------------------------------
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
    _attach(index, storage)
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


def _attach(index: Any, storage: Any) -> None:
    """Give an HNSW index read without storage its storage (kept alive by the index)."""
    index.storage = storage
    index.own_fields = False
    index.referenced_objects = [*getattr(index, "referenced_objects", []), storage]


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


# --- scheduling (in the indexer) -------------------------------------------------------
class Builds:
    """When to build, and the one build child at a time; driven by the indexer's loop.

    A build starts once the store holds `ann_min_rows` rows, and again when the rows not
    yet covered reach max(ann_update_rows, ann_update_fraction x covered) (so a bulk ingest
    costs a logarithmic number of builds, not one per update_rows), or when any are
    uncovered and `ann_update_seconds` passed since the last build. A failed build is
    retried after a backoff doubling from 30 s up to ann_update_seconds.
    """

    def __init__(self, cfg: Config, *, covered: int = 0, spawn: Any = None,
                 clock: Any = time.monotonic) -> None:
        self.cfg = cfg
        self.covered = covered
        self.spawn = spawn or self._spawn
        self.clock = clock
        self.proc: Any = None
        self.target = 0
        self.started = 0.0
        self.last_end = clock()
        self.retry_at = 0.0
        self.failures = 0
        self.builds = 0
        self.last_seconds: float | None = None

    def due(self, rows: int, now: float) -> bool:
        i = self.cfg.indexer
        if i.index == "exact" or self.proc is not None or rows < i.ann_min_rows or now < self.retry_at:
            return False
        new = rows - self.covered
        if new <= 0:
            return False
        return (self.covered == 0 or new >= max(i.ann_update_rows, UPDATE_FRACTION * self.covered)
                or now - self.last_end >= i.ann_update_seconds)

    def step(self, rows: int) -> bool:
        """Reap a finished build or start a due one; True when a new index was installed."""
        now = self.clock()
        if self.proc is not None:
            code = self.proc.poll()
            if code is None:
                return False
            self.proc, self.last_end = None, now
            if code == 0:
                self.covered, self.failures, self.builds = self.target, 0, self.builds + 1
                self.last_seconds = now - self.started
                log.info("%s index now covers %d rows (built in %.1f s)", self.cfg.indexer.index,
                         self.covered, self.last_seconds)
                return True
            self.failures += 1
            delay = min(self.cfg.indexer.ann_update_seconds, 30.0 * 2 ** (self.failures - 1))
            self.retry_at = now + delay
            log.error("index build exited with %s; retrying in %.0f s", code, delay)
            return False
        if self.due(rows, now):
            self.target, self.started = rows, now
            self.proc = self.spawn(rows)
            log.info("building the %s index over %d rows", self.cfg.indexer.index, rows)
        return False

    def _spawn(self, rows: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "roxi_mp.ann", *self.cfg.to_argv(), "--rows", str(rows)],
                                stdin=subprocess.DEVNULL, close_fds=True)

    def stop(self, timeout: float = 5.0) -> None:
        """End a running build (its .tmp file is removed at the next start)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self.proc = None

    def info(self) -> dict:
        return {"index": self.cfg.indexer.index, "ann_rows": self.covered, "building": self.proc is not None,
                "builds": self.builds, "build_failures": self.failures, "last_build_seconds": self.last_seconds}


# --- searching (in the query server) ---------------------------------------------------
class Searcher:
    """Search over committed rows: exactly, or through the approximate index plus a tail.

    Holds every mapping the query server has; dropping the Searcher unmaps them all.
    """

    def __init__(self, cfg: Config, *, rows: int, willneed: bool = False) -> None:
        self.cfg = cfg
        self.willneed = willneed
        self.kind = "exact"
        self.ann: Any = None
        self.head: Any = None  # the rows the approximate index covers, for exact fallbacks
        self.ann_rows = 0
        self.ann_signature: tuple[int, int] | None = None
        self.problem: str | None = None
        self.tail: Any = None
        self.rows = 0
        if cfg.indexer.index != "exact":
            self._open_ann(rows)
        self.follow(rows)

    @property
    def ntotal(self) -> int:
        return self.rows

    def _open_ann(self, rows: int) -> None:
        path, vpath = self.cfg.ann_path, self.cfg.vectors_path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return
        self.ann_signature = (st.st_ino, st.st_mtime_ns)
        try:
            h = check(path, vpath, kind=self.cfg.indexer.index, rows=rows)
            # HNSW reads these rows on every search; IVF only for a fallback: no read-ahead.
            self.head = vectors.open_index(vpath, rows=h.rows, willneed=self.willneed and h.kind == "hnsw")
            self.ann = _map(path, h, self.head, willneed=self.willneed)
        except (StoreError, RuntimeError) as exc:
            self.problem = str(exc)  # searched exactly until the indexer rebuilds it
            self.head = self.ann = None
            return
        self.problem = None
        if h.kind == "hnsw":
            self.ann.hnsw.efSearch = self.cfg.query.hnsw_ef_search
        else:
            self.ann.nprobe = self.cfg.query.ivf_nprobe
        self.kind, self.ann_rows = h.kind, h.rows

    def ann_changed(self) -> bool:
        """True when vectors.ann was replaced (or appeared, or went) since it was opened."""
        if self.cfg.indexer.index == "exact":
            return False
        try:
            st = os.stat(self.cfg.ann_path)
        except FileNotFoundError:
            return self.ann_signature is not None
        return (st.st_ino, st.st_mtime_ns) != self.ann_signature

    def follow(self, rows: int) -> None:
        """Cover `rows` committed rows: remap the exactly searched part [ann_rows, rows)."""
        self.tail = None  # unmap the old view before mapping the new one
        self.tail = vectors.open_index(self.cfg.vectors_path, rows=rows, start=self.ann_rows,
                                       willneed=self.willneed)
        self.rows = self.ann_rows + self.tail.ntotal

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and rows of the best `k` (fewer if the store is smaller), best first."""
        parts = []
        if self.ann is not None:
            want = min(k, self.ann_rows)
            scores, ids = self.ann.search(query, want)
            if (ids[0] >= 0).sum() < want:
                # An approximate index may find fewer than a large k (HNSW's candidate list,
                # IVF's probed lists): such a query scans its rows exactly instead.
                scores, ids = self.head.search(query, want)
            parts.append((scores, ids))
        if self.tail.ntotal:
            scores, ids = self.tail.search(query, min(k, self.tail.ntotal))
            parts.append((scores, np.where(ids >= 0, ids + self.ann_rows, -1)))
        if not parts:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        if len(parts) == 1:
            scores, ids = parts[0][0][0], parts[0][1][0]
        else:
            scores = np.concatenate([p[0][0] for p in parts])
            ids = np.concatenate([p[1][0] for p in parts])
            best = np.argsort(-scores, kind="stable")[:k]
            scores, ids = scores[best], ids[best]
        keep = ids >= 0
        return scores[keep], ids[keep]

    def info(self) -> dict:
        out: dict[str, Any] = {"index": self.kind, "ann_rows": self.ann_rows}
        if self.problem:
            out["index_problem"] = self.problem
        return out


def _map(path: Path, h: AnnHeader, head: Any, *, willneed: bool) -> Any:
    """Map an index file zero-copy; an HNSW index gets `head` (its rows of the vectors
    file, mapped) as its storage."""
    import faiss

    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    if willneed and hasattr(mmap, "MADV_WILLNEED"):
        mm.madvise(mmap.MADV_WILLNEED)
    buf = np.frombuffer(mm, dtype=np.uint8)[HEADER_BYTES:]
    flags = faiss.IO_FLAG_SKIP_STORAGE if h.kind == "hnsw" else 0
    index = faiss.read_index(faiss.ZeroCopyIOReader(faiss.swig_ptr(buf), buf.size), flags)
    index.referenced_objects = [buf]
    if h.kind == "hnsw":
        if head.ntotal != h.rows or index.ntotal != h.rows:
            raise StoreError(f"{path}: graph of {index.ntotal} rows, {head.ntotal} vectors mapped")
        _attach(index, head)
    elif index.ntotal != h.rows:
        raise StoreError(f"{path}: index holds {index.ntotal} rows, its header says {h.rows}")
    return index


# --- the build child ---------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """`python -m roxi_mp.ann --rows N [--data-dir D] [--config C]`: one build, then exit."""
    from . import config as config_mod
    from .process import child_parser, die_with_parent
    from .roles.base import setup_logging

    parser = child_parser("roxi_mp.ann")
    parser.add_argument("--rows", type=int, required=True)
    args = parser.parse_args(argv)
    die_with_parent()  # an indexer killed mid-build takes its build with it
    os.nice(10)  # a background build gives way to queries and embedding
    setup_logging("ann-build")
    try:
        cfg = config_mod.load(args.config, data_dir=args.data_dir)
        build(cfg.vectors_path, cfg.ann_path, BuildParams.from_config(cfg), rows=args.rows)
    except ConfigError as exc:
        print(f"roxi: index build: {exc}", file=sys.stderr)
        return BOOT_ERROR
    except RoxiError as exc:
        log.error("index build failed: %s", exc)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
