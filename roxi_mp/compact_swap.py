"""The indexer's half of a compaction: catch up, switch in one transaction, clean up.

roxi_mp.compact (the child) wrote the next epoch's vectors file with the rows it kept from
its snapshot. `finish` runs in the indexer while it commits nothing (see
roxi_mp.compact_schedule): it appends the rows committed since the snapshot, fsyncs, reads
every chunk's row, and in ONE transaction (`switch`) detaches the rows not kept (row NULL:
those chunks were dropped before the snapshot), renumbers the others (old kept[i] -> i,
old R + j -> len(kept) + j), sets committed_rows and bumps vectors_epoch, visibility_seq
and generation. The renumbering is strictly increasing with new <= old, so updating in
ascending old-row order never collides with UNIQUE(row). Everything fallible runs before
that commit, and nothing the old store needs is touched before it: a crash on either side
leaves one whole store. `Cleanup` then gives the space back in short transactions.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import compact
from .errors import StoreError
from .vectors import HEADER_BYTES, VectorWriter

if TYPE_CHECKING:  # numpy is imported where rows are copied and renumbered: the supervisor,
    import numpy as np  # which only reads compact_schedule.disk_refusal, never needs it (issue 22)

    from .config import Config
    from .store import Store

log = logging.getLogger("roxi.compact")

#: meta keys: how many compactions ran, and the last one ({at, rows_before, rows_after,
#: seconds, bytes_reclaimed}) as JSON
META_COUNT = "compactions"
META_LAST = "compaction_last"
#: rows copied per read while catching up with rows committed since the snapshot
TAIL_BLOCK_ROWS = 16_384
#: chunks or documents deleted per cleanup transaction (a few ms of the write lock each)
CLEANUP_BATCH = 5_000
#: free pages given back per cleanup step (4 KiB each: 32 MiB)
VACUUM_PAGES = 8_192


@dataclass
class Switched:
    """A finished switch: the indexer's new writer and what the switch committed."""

    writer: VectorWriter
    epoch: int
    generation: int
    rows: int
    record: dict
    switch_seconds: float  # the write lock's hold of the renumbering transaction


def history(store: Store) -> tuple[int, dict | None]:
    """(compactions so far, the last one's record or None), from the store's meta."""
    last = store.get_meta(META_LAST)
    return int(store.get_meta(META_COUNT, "0")), json.loads(last) if last else None


def copy_tail(old: Path, writer: VectorWriter, start: int, stop: int) -> None:
    """Append rows [start, stop) of the old file to the new one (appended since the snapshot)."""
    import numpy as np
    code = 2 * writer.dim
    with open(old, "rb") as f:
        for first in range(start, stop, TAIL_BLOCK_ROWS):
            n = min(TAIL_BLOCK_ROWS, stop - first)
            raw = os.pread(f.fileno(), n * code, HEADER_BYTES + first * code)
            if len(raw) != n * code:
                raise StoreError(f"{old}: short read of rows {first}..{first + n - 1}")
            writer.append(np.frombuffer(raw, dtype="<f2").reshape(n, writer.dim))
    writer.sync()


def renumbering(store: Store, kept: np.ndarray, rows_before: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(chunk ids to detach, chunk ids to move, their new rows in ascending old-row order).

    Read outside the switch's transaction: only the indexer (this process, which commits
    nothing meanwhile) gives chunks rows, and `switch` checks nothing changed."""
    import numpy as np
    found = np.fromiter(store.conn.execute(
        "SELECT id, row, state = 'dropped' FROM chunks WHERE row IS NOT NULL ORDER BY row"),
        dtype=[("id", "<i8"), ("row", "<i8"), ("dropped", "<i8")])  # no list of 1M tuples
    ids, old, dropped = found["id"], found["row"], found["dropped"].astype(bool)
    below = old < rows_before
    at = np.searchsorted(kept, old[below])
    hit = at < len(kept)
    hit[hit] = kept[at[hit]] == old[below][hit]
    if hit.sum() != len(kept):
        raise StoreError(f"compaction kept {len(kept)} rows but only {hit.sum()} still belong to chunks")
    if not dropped[below][~hit].all():
        raise StoreError("compaction left out a row of a chunk that is not dropped")
    new = np.empty(len(old), dtype=np.int64)
    new[below] = np.where(hit, at, -1)
    new[~below] = len(kept) + old[~below] - rows_before
    move = new >= 0
    detach = ids[~move]
    changed = move & (new != old)  # rows below the first gap keep their number
    return detach, ids[changed], new[changed]


def switch(store: Store, *, epoch: int, rows_now: int, kept_rows: int, rows_before: int, detach: np.ndarray,
           move_ids: np.ndarray, move_rows: np.ndarray, record: dict) -> tuple[int, int]:
    """THE switch, one transaction; returns (generation, committed rows of the new epoch)."""
    rows_after = kept_rows + rows_now - rows_before
    with store.transaction() as conn:
        if store.vectors_epoch() != epoch - 1 or store.committed_rows() != rows_now:
            raise StoreError(f"store moved on during the compaction (epoch {store.vectors_epoch()}, "
                             f"{store.committed_rows()} rows; expected {epoch - 1}, {rows_now})")
        with_row = conn.execute("SELECT count(*) FROM chunks WHERE row IS NOT NULL").fetchone()[0]
        if with_row != rows_now:
            raise StoreError(f"{with_row} chunks hold rows, {rows_now} are committed")
        conn.executemany("UPDATE chunks SET row=NULL WHERE id=?", ((i,) for i in detach.tolist()))
        conn.executemany("UPDATE chunks SET row=? WHERE id=?", zip(move_rows.tolist(), move_ids.tolist()))
        generation = store.generation() + 1
        store._set_meta("committed_rows", str(rows_after))
        store._set_meta("vectors_epoch", str(epoch))
        store._set_meta("generation", str(generation))
        store._bump_visibility()
        store._set_meta(META_COUNT, str(int(store.get_meta(META_COUNT, "0")) + 1))
        store._set_meta(META_LAST, json.dumps(record, sort_keys=True))
    return generation, rows_after


def finish(cfg: Config, *, epoch: int, rows_now: int, started: float, clock=time.monotonic) -> Switched:
    """Catch up, switch, and return the new writer (see the module docstring).

    `started` is when the compaction began (for its record). Before the switch commits,
    any failure deletes the new file and leaves the old store as it was."""
    from .store import Store

    result, kept = compact.read_result(cfg, epoch)
    new_path, old_path = cfg.vectors_file(epoch), cfg.vectors_file(epoch - 1)
    with Store.open(cfg) as store:
        model_id, dim = store.model()
        writer = VectorWriter(new_path, dim=dim, model_id=model_id)
        try:
            if writer.rows != result.kept:
                raise StoreError(f"{new_path}: holds {writer.rows} rows, the compaction wrote {result.kept}")
            copy_tail(old_path, writer, result.rows_before, rows_now)
            detach, move_ids, move_rows = renumbering(store, kept, result.rows_before)
            rows_after = result.kept + rows_now - result.rows_before
            record = {"at": round(time.time(), 3), "rows_before": rows_now, "rows_after": rows_after,
                      "seconds": round(clock() - started, 3), "bytes_reclaimed": (rows_now - rows_after) * 2 * dim}
            cfg.ann_path.unlink(missing_ok=True)  # built over the old numbering: queries search exactly
            t0 = clock()
            generation, rows = switch(store, epoch=epoch, rows_now=rows_now, kept_rows=result.kept,
                                      rows_before=result.rows_before, detach=detach, move_ids=move_ids,
                                      move_rows=move_rows, record=record)
            switch_seconds = clock() - t0
        except BaseException:
            writer.close()
            new_path.unlink(missing_ok=True)
            raise
    writer.publish(rows)
    log.info("compacted %d rows to %d (epoch %d); the switch held the write lock %.2f s",
             rows_now, rows, epoch, switch_seconds)
    return Switched(writer, epoch, generation, rows, record, switch_seconds)


class Cleanup:
    """After a switch, in short steps: delete the old file and sidecars, the chunks left
    without a row, the dead documents left without chunks (except each key's newest
    version, so version numbers never repeat), then give free pages back to the OS."""

    def __init__(self, cfg: Config, epoch: int) -> None:
        self.cfg, self.epoch = cfg, epoch
        self.phase = 0
        self.free = -1  # free pages after the last vacuum step
        self.started = time.monotonic()
        self.deleted_chunks = self.deleted_documents = 0

    def step(self, store: Store) -> bool:
        """One bounded step; True while there is more to do."""
        if self.phase == 0:
            compact.remove_strays(self.cfg, self.epoch)
            self.phase = 1
        elif self.phase == 1:
            with store.transaction() as conn:
                n = conn.execute("DELETE FROM chunks WHERE id IN (SELECT id FROM chunks WHERE state='dropped' "
                                 "AND row IS NULL LIMIT ?)", (CLEANUP_BATCH,)).rowcount
            self.deleted_chunks += n
            self.phase += n < CLEANUP_BATCH
        elif self.phase == 2:
            with store.transaction() as conn:
                n = conn.execute(
                    "DELETE FROM documents WHERE id IN (SELECT d.id FROM documents d WHERE d.status='dead' "
                    "AND NOT EXISTS (SELECT 1 FROM chunks c WHERE c.doc_id = d.id) "
                    "AND d.version < (SELECT max(o.version) FROM documents o WHERE o.key = d.key) LIMIT ?)",
                    (CLEANUP_BATCH,)).rowcount
            self.deleted_documents += n
            self.phase += n < CLEANUP_BATCH
        elif self.phase == 3:
            if store.conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # 2: INCREMENTAL
                self.phase = 4  # a store created before: its free pages are reused, not given back
                return True
            # executescript steps the pragma to its end; execute() would free one page.
            store.conn.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")
            free = store.conn.execute("PRAGMA freelist_count").fetchone()[0]
            self.phase += free == 0 or free == self.free  # done, or stuck (never loop forever)
            self.free = free
        else:
            store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            log.info("compaction cleanup: %d chunks and %d dead documents deleted, space given back, in %.1f s",
                     self.deleted_chunks, self.deleted_documents, time.monotonic() - self.started)
            return False
        return True
