"""What the query server searches: the current vectors file, mapped, minus its hidden rows.

Which rows a query may see changes in SQLite transactions: a commit adds rows, a delete or
a promotion hides some (documents that change, roxi_mp.store_docs), a compaction moves to
a new vectors file with the rows renumbered (a new epoch). Each such transaction bumps a
number in `meta`, so the query server reads one small `Visibility` (epoch, visibility
sequence, committed rows) per query, inside the read snapshot it then searches and looks
hits up in, and `RowView.sync` fetches only what changed since the last one:

- a new epoch (or a fresh view, after sleep or a reload): the epoch's file is mapped anew
  and the hidden rows are read whole (`Store.hidden_rows(0, rows)`);
- new committed rows: the exactly searched tail is remapped, and the hidden rows among the
  new ones are read (`hidden_rows(old, new)`: tombstones, rows of pending replacements);
- a new visibility sequence: the rows of the documents it changed are hidden or shown
  again (`Store.changed_rows`).

The hidden rows are a packed bitmap in faiss's bit order (bit r % 8 of byte r // 8) that
the Searcher filters inside its search. The Searcher holds every mapping; `drop()` (deep
sleep, a reload) lets them all go together with the bitmap.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, TypeVar

import numpy as np

from .errors import StoreError
from .search import Searcher

if TYPE_CHECKING:
    from .config import Config
    from .store import Store
    from .store_docs import Visibility

log = logging.getLogger("roxi.query")
T = TypeVar("T")

#: read snapshots a query takes when its vectors file was deleted by a newer compaction
SNAPSHOT_TRIES = 3


class VectorsGone(StoreError):
    """The vectors file of a snapshot's epoch is gone: a newer compaction switched files and
    deleted it after the snapshot began. A new snapshot names the current file."""


class RowView:
    """The Searcher over the store's current vectors file and the rows it must not return,
    as of the last `sync`."""

    def __init__(self, cfg: Config, *, willneed: bool = False) -> None:
        self.cfg = cfg
        self.willneed = willneed
        self.searcher: Searcher | None = None
        self.epoch = self.seq = -1  # of the last sync; -1: none yet, the next one reads everything
        self.rows = 0  # committed rows of the last sync: the rows the bitmap covers
        self.bits = np.zeros(0, dtype=np.uint8)

    @property
    def mapped_rows(self) -> int:
        return self.searcher.ntotal if self.searcher is not None else 0

    def drop(self) -> None:
        """Unmap everything and forget the hidden rows (the next sync starts afresh)."""
        self.searcher = None  # the only holder of the mappings: this unmaps the files
        self.epoch = self.seq = -1
        self.rows = 0
        self.bits = np.zeros(0, dtype=np.uint8)

    def read(self, store: Store, read: Callable[[], T], *,
             on_change: Callable[[], None]) -> tuple[Visibility, T]:
        """In one read snapshot of `store`: its visibility, `sync` to it (`on_change()` if
        an answer may differ from the last snapshot's), then `read()`. A snapshot whose
        vectors file is gone is taken again (a newer one names the current file)."""
        for attempt in range(1, SNAPSHOT_TRIES + 1):
            try:
                with store.snapshot():
                    vis = store.visibility()
                    if self.sync(store, vis):
                        on_change()
                    return vis, read()
            except VectorsGone as exc:
                if attempt == SNAPSHOT_TRIES:
                    raise StoreError(f"{exc} ({SNAPSHOT_TRIES} snapshots in a row)") from exc
                log.info("%s: reading the store again", exc)
        raise AssertionError("unreachable")

    def sync(self, store: Store, vis: Visibility) -> bool:
        """Map and hide as of `vis`, read by the caller in the read snapshot it holds open
        on `store` (so rows, hidden rows and the later hit lookup agree). True when an
        answer may have changed since the last sync. VectorsGone if the epoch's file is."""
        if (vis.epoch, vis.seq, vis.rows) == (self.epoch, self.seq, self.rows) and self.mapped_rows == vis.rows:
            return False
        try:
            if vis.epoch != self.epoch or vis.rows < self.rows or (self.searcher is None and vis.rows):
                self._map_afresh(store, vis)
                marked = True
            else:
                marked = False
                if self.mapped_rows != vis.rows:
                    self.searcher.follow(vis.rows)  # remaps only the exactly searched rows
                if vis.rows > self.rows:
                    self._grow(vis.rows)
                    marked |= self._mark(store.hidden_rows(self.rows, vis.rows), hide=True)
                    self.rows = vis.rows
                if vis.seq != self.seq:
                    now_hidden, now_visible = store.changed_rows(self.seq, vis.rows)
                    marked |= self._mark(now_hidden, hide=True)
                    marked |= self._mark(now_visible, hide=False)
            self.epoch, self.seq = vis.epoch, vis.seq
            if marked and self.searcher is not None:
                # Rows beyond the bitmap a Searcher holds are visible: only a bit set or
                # cleared needs a new one (nothing set: no selector at all).
                self.searcher.set_hidden(self.bits)
        except BaseException:
            self.drop()  # half applied is never searched: the next sync starts afresh
            raise
        return True

    def _map_afresh(self, store: Store, vis: Visibility) -> None:
        self.drop()  # unmap the old file before mapping the new one
        if vis.rows:
            path = self.cfg.vectors_file(vis.epoch)
            try:
                self.searcher = Searcher(self.cfg, rows=vis.rows, willneed=self.willneed, vectors_path=path)
            except (StoreError, OSError) as exc:
                if not path.exists():
                    raise VectorsGone(f"{path}: vectors file of epoch {vis.epoch} is gone") from exc
                raise
        self._grow(vis.rows)
        self._mark(store.hidden_rows(0, vis.rows), hide=True)
        self.rows = vis.rows

    def _grow(self, rows: int) -> None:
        need = (rows + 7) // 8
        if need > self.bits.size:
            self.bits = np.concatenate((self.bits, np.zeros(need - self.bits.size, dtype=np.uint8)))

    def _mark(self, rows: np.ndarray, *, hide: bool) -> bool:
        """Set (hide) or clear the bits of `rows`; False when there were none."""
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[(rows >= 0) & (rows < 8 * self.bits.size)]
        if not rows.size:
            return False
        masks = np.left_shift(1, rows & 7).astype(np.uint8)
        if hide:
            np.bitwise_or.at(self.bits, rows >> 3, masks)
        else:
            np.bitwise_and.at(self.bits, rows >> 3, ~masks)
        return True
