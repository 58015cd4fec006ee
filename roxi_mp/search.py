"""Search over committed rows, in the query server: exact, or approximate index plus tail.

Exact search reads every row. With an approximate index over the first B rows
(`vectors.ann`, see roxi_mp.ann) the Searcher maps it zero-copy, searches the tail [B, N)
exactly, and merges the two top-k lists by score, so a committed row is findable at once,
whatever the index. An index that does not fit the vectors file is not used: search is
exact until the indexer rebuilds it.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import vectors
from .ann import HEADER_BYTES, AnnHeader, attach_storage, check
from .errors import StoreError

if TYPE_CHECKING:
    from .config import Config


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


def find_hits(searcher: Searcher, store: Any, vector: np.ndarray, k: int, *, with_text: bool) -> list[dict]:
    """The best `k` committed rows for `vector` as hit maps, best first (the query reply's
    `hits`); `store` (a Store) supplies each row's chunk and document, never all texts."""
    scores, rows = searcher.search(vector, k)
    found = [(int(r), float(s)) for r, s in zip(rows, scores)]
    meta = store.hits([r for r, _ in found], with_text=with_text)
    hits = []
    for rank, (row, score) in enumerate(found, start=1):
        hit = meta.get(row)
        if hit is None:
            continue  # cannot happen for committed rows; never invent a hit
        item = {"rank": rank, "score": score, "row": row, "chunk_id": hit.chunk_id,
                "doc_id": hit.doc_id, "position": hit.position, "title": hit.title,
                "source": hit.source}
        if with_text:
            item["text"] = hit.text
        hits.append(item)
    return hits


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
        attach_storage(index, head)
    elif index.ntotal != h.rows:
        raise StoreError(f"{path}: index holds {index.ntotal} rows, its header says {h.rows}")
    return index
