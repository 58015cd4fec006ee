"""The embedder side of the store: the chunk work queue, handed out under leases.

A chunk's state goes pending -> leased -> indexed, or to failed after `max_attempts`
embedding errors. An embedder claims chunks with a lease that expires, so the chunks of
an embedder that died go back to the queue without anyone having to notice the death;
a live embedder renews its leases while a slow service works. Only the indexer marks
chunks indexed (`Store.commit_rows`). `ChunkLeases` is a part of `Store` (a mixin over its
connection and transactions), kept in its own module because it is the embedders' half.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, Sequence

PENDING, LEASED, INDEXED, FAILED = "pending", "leased", "indexed", "failed"
#: ids per statement, under SQLite's limit on bound parameters (999 in older builds)
PARAMETER_BATCH = 900


class ChunkLeases:
    """Claim, renew and release chunks; the methods of `Store` an embedder calls."""

    # provided by Store
    conn: sqlite3.Connection
    transaction: Callable[[], Any]

    def claim(self, owner: str, limit: int, *, now: float, lease_seconds: float) -> list[tuple[int, str]]:
        """Lease up to `limit` chunks that are pending or whose lease has expired."""
        with self.transaction():
            # Two limited index range scans: one query with an OR would gather every
            # pending id before sorting (40 ms a claim with 300k pending, measured).
            ids = [r[0] for r in self.conn.execute(
                "SELECT id FROM chunks WHERE state='leased' AND lease_expires < ? ORDER BY id LIMIT ?",
                (now, limit))]
            ids += [r[0] for r in self.conn.execute(
                "SELECT id FROM chunks WHERE state='pending' ORDER BY id LIMIT ?", (limit,))]
            ids = sorted(ids)[:limit]
            if not ids:
                return []
            rows = self.conn.execute(
                f"UPDATE chunks SET state='leased', lease_owner=?, lease_expires=?, attempts=attempts+1 "
                f"WHERE id IN ({','.join('?' * len(ids))}) RETURNING id, text",
                (owner, now + lease_seconds, *ids)).fetchall()
        rows.sort()
        return rows

    def release(self, chunk_ids: Sequence[int], *, owner: str, error: str | None = None,
                max_attempts: int | None = None, count_attempt: bool = True) -> int:
        """Give leased chunks back after an embedding error; returns how many were marked failed.

        With `count_attempt`, the claim's attempt stands and a chunk out of attempts is
        marked failed with `error`. Without it (the service was down, not the chunk at
        fault) the attempt is taken back: an outage must not use up every chunk's attempts.
        """
        failed = 0
        with self.transaction():
            for cid in chunk_ids:
                if not count_attempt:
                    self.conn.execute(
                        "UPDATE chunks SET state='pending', attempts=max(attempts - 1, 0), lease_owner=NULL, "
                        "lease_expires=NULL, error=? WHERE id=? AND state='leased' AND lease_owner=?",
                        (error, cid, owner))
                    continue
                row = self.conn.execute(
                    "UPDATE chunks SET state = CASE WHEN ? IS NOT NULL AND attempts >= ? "
                    "THEN 'failed' ELSE 'pending' END, lease_owner=NULL, lease_expires=NULL, error=? "
                    "WHERE id=? AND state='leased' AND lease_owner=? RETURNING state",
                    (max_attempts, max_attempts, error, cid, owner)).fetchone()
                failed += bool(row and row[0] == FAILED)
        return failed

    def renew(self, chunk_ids: Sequence[int], *, owner: str, now: float, lease_seconds: float) -> int:
        """Extend our leases on chunks still being worked on (a slow API must not let them
        expire, or another embedder would pay to embed them again). Returns leases renewed."""
        renewed = 0
        with self.transaction():
            for start in range(0, len(chunk_ids), PARAMETER_BATCH):
                part = list(chunk_ids[start:start + PARAMETER_BATCH])
                marks = ",".join("?" * len(part))
                renewed += self.conn.execute(
                    f"UPDATE chunks SET lease_expires=? WHERE id IN ({marks}) AND state='leased' "
                    f"AND lease_owner=?", [now + lease_seconds, *part, owner]).rowcount
        return renewed

    def retry_failed(self) -> int:
        """Put every failed chunk back to pending with fresh attempts; returns how many."""
        with self.transaction():
            return self.conn.execute(
                "UPDATE chunks SET state='pending', attempts=0, error=NULL WHERE state='failed'").rowcount

    def failures(self, limit: int = 20) -> list[tuple[int, str, str | None]]:
        """(chunk id, document source, error) of failed chunks, for status and progress."""
        return self.conn.execute(
            "SELECT c.id, d.source, c.error FROM chunks c JOIN documents d ON d.id = c.doc_id "
            "WHERE c.state='failed' ORDER BY c.id LIMIT ?", (limit,)).fetchall()

    def unfinished(self, *, paused: bool = False) -> bool:
        """Whether chunks are still on their way to a row: leased (an embedder has them),
        to copy (the indexer's), or pending (unless `paused`: no embedder claims them)."""
        states = "'leased', 'copy'" if paused else "'pending', 'leased', 'copy'"
        return self.conn.execute(f"SELECT 1 FROM chunks WHERE state IN ({states}) LIMIT 1").fetchone() is not None

    def pending_count(self, *, now: float) -> int:
        pending = self.conn.execute("SELECT count(*) FROM chunks WHERE state='pending'").fetchone()[0]
        expired = self.conn.execute("SELECT count(*) FROM chunks WHERE state='leased' AND lease_expires < ?",
                                    (now,)).fetchone()[0]
        return pending + expired
