"""Search over committed rows, in the query server: exact, or approximate index plus tail.

Exact search reads every row. With an approximate index over the first B rows
(`vectors.ann`, see roxi_mp.ann) the Searcher maps it zero-copy, searches the tail [B, N)
exactly, and merges the two top-k lists by score, so a committed row is findable at once,
whatever the index. An index that does not fit the vectors file is not used: search is
exact until the indexer rebuilds it. The vectors file is the one the caller names (after a
compaction, the store's current epoch: Config.vectors_file), the first one by default.

Hidden rows (dead or not yet live document versions; `Searcher.set_hidden`) never come
back, and k hits asked are k visible hits found (fewer only when fewer are visible). The
approximate index filters them inside its search through a selector, the negation of a
tombstone bitmap: rows beyond the bitmap (appended after it was made) are visible. An exact
scan first asks faiss, with no selector, for its best `want + hidden` rows when that is at
most OVERFETCH_MAX (at least `want` of them are visible: the answer is exact), else for
about twice as many as the visible fraction needs; when fewer than `want` of those are
visible (hidden rows crowd the query's neighbourhood) it scans again with the selector. The
selector's test of each row is a branch the CPU cannot predict when rows are hidden at
random: it doubled the exact scan at 30 % hidden (tests/bench/bench_filter.py). With nothing
hidden, searches pass no selector at all.
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


#: the most rows an exact scan with hidden rows asks of faiss before it scans with a selector
OVERFETCH_MAX = 512
#: rows asked beyond twice what the visible fraction needs (a small `want` varies most)
OVERFETCH_SPARE = 16


class Searcher:
    """Search over committed rows: exactly, or through the approximate index plus a tail.

    Holds every mapping the query server has; dropping the Searcher unmaps them all.
    """

    def __init__(self, cfg: Config, *, rows: int, willneed: bool = False,
                 vectors_path: Path | None = None) -> None:
        self.cfg = cfg
        self.vectors_path = cfg.vectors_path if vectors_path is None else Path(vectors_path)
        self.willneed = willneed
        self.kind = "exact"
        self.ann: Any = None
        self.head: Any = None  # the rows the approximate index covers, for exact fallbacks
        self.ann_rows = 0
        self.ann_signature: tuple[int, int] | None = None
        self.problem: str | None = None
        self.tail: Any = None
        self.rows = 0
        self.hidden: Hidden | None = None  # None: nothing hidden, no selector anywhere
        self.head_hidden = self.tail_hidden = 0  # hidden rows in [0, ann_rows), [ann_rows, rows)
        if cfg.indexer.index != "exact":
            self._open_ann(rows)
        self.follow(rows)

    @property
    def ntotal(self) -> int:
        return self.rows

    def _open_ann(self, rows: int) -> None:
        path, vpath = self.cfg.ann_path, self.vectors_path
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
        self.tail = vectors.open_index(self.vectors_path, rows=rows, start=self.ann_rows,
                                       willneed=self.willneed)
        self.rows = self.ann_rows + self.tail.ntotal
        self.tail_hidden = self.hidden.count(self.ann_rows, self.rows) if self.hidden else 0

    def set_hidden(self, bitmap: np.ndarray | None) -> None:
        """Hide rows from every later search: bit r % 8 of byte r // 8 set hides row r (faiss's
        bit order, np.packbits(..., bitorder="little")). Rows beyond the bitmap are visible,
        also rows appended later; None or no bit set hides nothing. The bitmap is copied, so
        the caller may change its own afterwards (and calls this again to apply it); a new
        Searcher (after a reload) starts with nothing hidden."""
        if bitmap is not None and np.asarray(bitmap).dtype != np.uint8:
            raise TypeError(f"a hidden-rows bitmap is packed uint8, not {np.asarray(bitmap).dtype}")
        if bitmap is None or not np.any(bitmap):
            self.hidden, self.head_hidden, self.tail_hidden = None, 0, 0
            return
        hidden = Hidden(np.array(bitmap, dtype=np.uint8).reshape(-1), tail_start=self.ann_rows)
        if self.ann is not None:
            hidden.ann_params = _ann_params(self.kind, hidden.head_sel, self.cfg)
        self.hidden = hidden
        self.head_hidden = hidden.count(0, self.ann_rows) if self.ann is not None else 0
        self.tail_hidden = hidden.count(self.ann_rows, self.rows)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and rows of the best `k` visible rows (fewer if the store holds fewer),
        best first."""
        parts = []
        h = self.hidden
        if self.ann is not None and (want := min(k, self.ann_rows - self.head_hidden)) > 0:
            filtered = h is not None and self.head_hidden > 0
            scores, ids = self.ann.search(query, want, params=h.ann_params if filtered else None)
            if (ids[0] >= 0).sum() < want:
                # An approximate index may find fewer than a large k (HNSW's candidate list,
                # IVF's probed lists, fewer still among hidden rows): such a query scans its
                # rows exactly instead.
                scores, ids = _exact(self.head, query, want, self.head_hidden if filtered else 0,
                                     h.bitmap if filtered else None, h.head_params if filtered else None)
            parts.append((scores, ids))
        if (want := min(k, self.tail.ntotal - self.tail_hidden)) > 0:
            filtered = h is not None and self.tail_hidden > 0
            scores, ids = _exact(self.tail, query, want, self.tail_hidden if filtered else 0,
                                 h.tail_bitmap if filtered else None, h.tail_params if filtered else None)
            parts.append((scores, np.where(ids >= 0, ids + self.ann_rows, -1) if self.ann_rows else ids))
        if not parts:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        if len(parts) == 1:
            scores, ids = parts[0][0][0], parts[0][1][0]
        else:
            scores = np.concatenate([p[0][0] for p in parts])
            ids = np.concatenate([p[1][0] for p in parts])
            best = np.argsort(-scores, kind="stable")[:k]
            scores, ids = scores[best], ids[best]
        if ids.size and ids.min() < 0:  # faiss pads a short list with -1
            keep = ids >= 0
            return scores[keep], ids[keep]
        return scores, ids

    def info(self) -> dict:
        out: dict[str, Any] = {"index": self.kind, "ann_rows": self.ann_rows}
        if self.hidden is not None:  # like index_problem, only when there is something to say
            out["hidden_rows"] = self.head_hidden + self.tail_hidden
        if self.problem:
            out["index_problem"] = self.problem
        return out


class Hidden:
    """Hidden rows as faiss search parameters, for the head (file rows, ids from 0) and the
    tail (ids from `tail_start`, so over a bitmap shifted by as much).

    faiss keeps raw pointers to the bitmaps and selectors: this object holds them for as
    long as the parameters are used.
    """

    def __init__(self, bitmap: np.ndarray, *, tail_start: int) -> None:
        import faiss

        self.bitmap = bitmap
        self.head_sel = _not_in(bitmap)
        self.head_params = faiss.SearchParameters(sel=self.head_sel)
        self.ann_params: Any = None  # set by the Searcher for its kind of index
        bits = np.unpackbits(bitmap, bitorder="little")[tail_start:]
        self.tail_bitmap = np.packbits(bits, bitorder="little") if tail_start else bitmap
        self.tail_sel = _not_in(self.tail_bitmap) if self.tail_bitmap.size else None
        self.tail_params = None if self.tail_sel is None else faiss.SearchParameters(sel=self.tail_sel)

    def count(self, start: int, stop: int) -> int:
        """Hidden rows in [start, stop)."""
        stop = min(stop, 8 * self.bitmap.size)
        if stop <= start:
            return 0
        first = start // 8
        bits = np.unpackbits(self.bitmap[first:(stop + 7) // 8], bitorder="little")
        return int(np.count_nonzero(bits[start - 8 * first:stop - 8 * first]))


def _exact(index: Any, query: np.ndarray, want: int, hidden: int, bitmap: np.ndarray | None,
           params: Any) -> tuple[np.ndarray, np.ndarray]:
    """The best `want` visible rows of an exact scan of `index` (shape (1, n), n <= want),
    `hidden` of its rows hidden by `bitmap` (ids from 0, rows beyond it visible), `params`
    their selector: see the module's docstring."""
    if not hidden:
        return index.search(query, want)
    if want + hidden <= OVERFETCH_MAX:
        ask = want + hidden
    else:
        total = index.ntotal
        ask = min(OVERFETCH_MAX, 2 * want * total // max(1, total - hidden) + OVERFETCH_SPARE)
    scores, ids = index.search(query, ask)
    scores, ids = scores[0], ids[0]
    found = ids >= 0
    inside = found & (ids < 8 * bitmap.size)
    at = np.where(inside, ids, 0)
    shown = np.flatnonzero(found & ~(inside & ((bitmap[at >> 3] >> (at & 7)) & 1).astype(bool)))
    # Enough visible rows among the best `ask`, or fewer rows than `ask` at all (every row
    # was ranked): no visible row outside them can rank higher.
    if shown.size >= want or not found.all():
        shown = shown[:want]
        return scores[shown][None, :], ids[shown][None, :]
    return index.search(query, want, params=params)


def _not_in(bitmap: np.ndarray) -> Any:
    """A selector of the ids whose bit is clear, including every id beyond the bitmap
    (IDSelectorBitmap alone selects none of those)."""
    import faiss

    inner = faiss.IDSelectorBitmap(bitmap.size, faiss.swig_ptr(bitmap))
    outer = faiss.IDSelectorNot(inner)
    outer.referenced_objects = [inner, bitmap]
    return outer


def _ann_params(kind: str, sel: Any, cfg: Config) -> Any:
    """Search parameters of the approximate index with a selector. They replace the index's
    own settings (faiss's defaults are efSearch 16, nprobe 1), so they repeat the configured ones."""
    import faiss

    if kind == "hnsw":
        return faiss.SearchParametersHNSW(sel=sel, efSearch=cfg.query.hnsw_ef_search)
    return faiss.SearchParametersIVF(sel=sel, nprobe=cfg.query.ivf_nprobe)


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
