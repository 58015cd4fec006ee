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

Reading even that much costs a query 0.2-0.3 ms when a large scan has just flushed the
CPU caches, so a query first asks only whether anything was committed since the last read
(`CommitWatch`): if not, the view, the coverage read with it and the row fields
(`RowFields`, what the hit lookup needs of each row, filled a slice at a time while the
server is idle: `extend`) are all still current, and the query needs no snapshot. Anything
committed (by any writer) sends it through the full read again.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
from typing import TYPE_CHECKING, Callable, Sequence, TypeVar

import numpy as np

from .errors import StoreError
from .search import Searcher
from .store_docs import Visibility
from .store_hits import Hit, RowFields

if TYPE_CHECKING:
    from .config import Config
    from .store import Store

log = logging.getLogger("roxi.query")
T = TypeVar("T")

#: read snapshots a query takes when its vectors file was deleted by a newer compaction
SNAPSHOT_TRIES = 3
#: the WAL-index header at the start of a WAL store's -shm file: two copies of 48 bytes,
#: rewritten by every commit (https://www.sqlite.org/walformat.html)
WAL_INDEX_HEADER_BYTES = 96
#: its first field, iVersion, in the host's byte order: the one format since SQLite 3.7.0
WAL_INDEX_VERSION = (3007000).to_bytes(4, sys.byteorder)


class VectorsGone(StoreError):
    """The vectors file of a snapshot's epoch is gone: a newer compaction switched files and
    deleted it after the snapshot began. A new snapshot names the current file."""


class CommitWatch:
    """A mark of the store's committed state: equal marks, nothing committed in between.

    The mark is the WAL-index header of the store's -shm file, which SQLite rewrites with
    every commit (the frames it appended, their checksum, the WAL's salts): one pread,
    where `Store.data_version` (the documented way) takes a read transaction, 0.05-0.1 ms
    on caches a scan has just flushed. Only a header whose two copies agree, in a file
    still linked, read while the store connection given is open (its lock keeps other
    connections from deleting the file), is a mark; anything else falls back on
    data_version. The two kinds of mark never compare equal."""

    def __init__(self) -> None:
        self.store: Store | None = None
        self.fd = -1

    def mark(self, store: Store) -> bytes | int:
        if store is not self.store:
            self.close()
            self.store = store
        if self.fd < 0:
            try:
                self.fd = os.open(f"{store.path}-shm", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return store.data_version()  # not a WAL store, or not opened in WAL mode yet
        raw = os.pread(self.fd, WAL_INDEX_HEADER_BYTES, 0)
        if os.fstat(self.fd).st_nlink == 0:  # after the read: it was the live file when read
            self.close()  # deleted (the last other connection closed): open the new one next time
        elif (len(raw) == WAL_INDEX_HEADER_BYTES and raw[:48] == raw[48:]
              and raw[:4] == WAL_INDEX_VERSION and raw[12] == 1):  # 12: isInit
            return raw
        return store.data_version()

    def unchanged(self, store: Store, mark: bytes | int | None) -> bool:
        """Whether `store` still shows `mark` (an earlier `mark(store)`), read the quick way:
        a header mark read again from the same linked file, or failing that `mark` again."""
        if store is self.store and self.fd >= 0 and type(mark) is bytes:
            if os.pread(self.fd, WAL_INDEX_HEADER_BYTES, 0) == mark and os.fstat(self.fd).st_nlink:
                return True  # the bytes a valid header had, in the live file
        return self.mark(store) == mark

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.store = None


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
        self.fields: RowFields | None = None  # of the mapped file (its epoch), made with the Searcher
        self.watch = CommitWatch()
        self.version: bytes | int | None = None  # CommitWatch.mark before the last full read; None: read again
        self.vis = Visibility(0, 0, 0)  # of the last full read
        self.coverage: dict = {}  # Store.coverage() of the last full read, less its generation (never changed: replaced)
        self.generation = 0  # the store's generation, as of the last full read
        self.live: dict[int, bool] = {}  # document id: live? read since the last full read

    @property
    def mapped_rows(self) -> int:
        return self.searcher.ntotal if self.searcher is not None else 0

    def drop(self) -> None:
        """Unmap everything and forget the hidden rows (the next sync starts afresh)."""
        self.searcher = None  # the only holder of the mappings: this unmaps the files
        self.fields = None
        self.version = None
        self.watch.close()  # the store connection may close next
        self.epoch = self.seq = -1
        self.rows = 0
        self.bits = np.zeros(0, dtype=np.uint8)

    def read(self, store: Store, read: Callable[[], T], *,
             on_change: Callable[[], None]) -> tuple[Visibility, T]:
        """In one read snapshot of `store`: its visibility, `sync` to it (`on_change()` if
        an answer may differ from the last snapshot's), its coverage, then `read()`. A
        snapshot whose vectors file is gone is taken again (a newer one names the current
        file). When nothing was committed since the last such read, `read()` alone, with
        no snapshot: that read is still the store's state."""
        version = self.watch.mark(store)  # before the snapshot: it sees at least this state
        if version == self.version:
            return self.vis, read()
        for attempt in range(1, SNAPSHOT_TRIES + 1):
            try:
                with store.snapshot():
                    vis = store.visibility()
                    if self.sync(store, vis):
                        on_change()
                    coverage = store.coverage()
                    self.generation = coverage.pop("generation")
                    self.coverage = coverage
                    self.live = {}  # anything may have changed: ask again
                    out = read()
                self.version, self.vis = version, vis
                return vis, out
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
        self.fields = RowFields(vis.epoch)
        self._grow(vis.rows)
        self._mark(store.hidden_rows(0, vis.rows), hide=True)
        self.rows = vis.rows

    def hits(self, store: Store, rows: Sequence[int], *, with_text: bool) -> dict[int, Hit]:
        """`Store.hits` of rows the Searcher returned, from the row fields when they cover
        them all; call in the state of the last sync. Either way a row of a version not
        live is left out (and logged), checked against SQLite: the last line of defence
        if the hidden rows were ever wrong."""
        fields = self.fields
        if fields is None or not fields.covers(rows):
            return store.hits(rows, with_text=with_text)
        return store.field_hits(fields, rows, with_text=with_text, live=self.live)

    def fields_pending(self) -> bool:
        """Rows of the last sync not yet in the row fields."""
        return self.fields is not None and self.fields.built < self.rows

    def extend(self, store: Store, max_rows: int) -> None:
        """Read the fields of up to `max_rows` more rows of the last sync, in a snapshot of
        the same file (a compaction since: none, the next query maps the new file afresh)."""
        fields = self.fields
        if fields is None or fields.built >= self.rows:
            return
        try:
            with store.snapshot():
                vis = store.visibility()
                if vis.epoch != fields.epoch or vis.rows < self.rows:
                    self.fields = None  # rows renumbered: hits from SQLite until mapped afresh
                    return
                stop = min(self.rows, fields.built + max_rows)
                fields.add(stop, store.row_fields(fields.built, stop))
        except (sqlite3.Error, StoreError) as exc:
            log.warning("row fields not read (hits from SQLite): %s", exc)
            self.fields = None

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
