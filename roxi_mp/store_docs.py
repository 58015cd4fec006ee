"""Documents that change: keys, versions, replace and delete, in the store.

A document is a key (client-chosen; a resolved path for files) with numbered versions. At
most one version is `live` (its indexed rows answer queries) and at most one `pending` (a
replacement being embedded while the live one keeps answering). A first version is live at
once, so its rows answer as they are indexed, as they always have. A replacement stays
pending until every one of its chunks is indexed; then the indexer's commit transaction
(Store.commit_rows -> `_promote`) makes it live and the old version dead, so a query sees
one version, never both, never neither. A newer put supersedes a pending version (last
writer wins); a delete makes every version of the key dead. The chunks of a dead version
become `dropped`: never claimed again, and their rows, if any, are tombstones that the
query server filters inside the search until compaction removes them.

Which rows a query may see changes only in these transactions, and each bumps
`meta.visibility_seq` and stamps the documents it changed with it, so the query server can
check one number per query and fetch only what changed (`visibility`, `changed_rows`).
A chunk whose text was already embedded is stored as a `copy`: the indexer copies the
vector into a new row instead of an embedder buying it again (`claim_copies`).
`DocumentVersions` is a part of `Store` (a mixin over its connection and transactions).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple

from .errors import NotFound

if TYPE_CHECKING:  # imported where rows become arrays: the documents role never needs it
    import numpy as np

LIVE, PENDING_VERSION, DEAD = "live", "pending", "dead"
#: chunk states added by documents that change (see roxi_mp.store_leases for the others)
COPY, DROPPED = "copy", "dropped"
#: a row range wider than this is filtered through the dropped chunks, not row by row
RANGE_SCAN_ROWS = 100_000


@dataclass(frozen=True)
class PutResult:
    """What a put did: `outcome` is added (a first version, live at once), replaced (a new
    version, pending until indexed), or unchanged (identical to the newest version)."""

    outcome: str
    key: str
    version: int
    doc_id: int
    chunks: int = 0
    reused: int = 0  # chunks whose vector will be copied, not embedded
    superseded: int | None = None  # the pending version this put replaced, if any

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Visibility(NamedTuple):
    """One snapshot's answer to "which rows may a query see": the vectors file (epoch), the
    visibility sequence, and the committed rows."""

    epoch: int
    seq: int
    rows: int


class DocumentVersions:
    """`Store.put_document`, `delete_document`, `document`, `documents` and the query
    server's visibility reads."""

    # provided by Store
    conn: sqlite3.Connection
    transaction: Callable[[], Any]
    get_meta: Callable[..., Any]
    _set_meta: Callable[[str, str], None]
    _insert_chunks: Callable[..., int]

    # --- writers -------------------------------------------------------------------
    def put_document(self, *, key: str, content_hash: str, source: str, title: str, size: int,
                     chunks: Iterable[tuple], content_type: str = "text/plain",
                     metadata: dict | None = None, batch: int = 512) -> PutResult:
        """Store `chunks` (position, text, hash[, page, heading]) as the newest version of
        `key`, in one transaction; identical content, title, type and metadata is `unchanged`. The chunk
        iterable may be a lazy stream; an error raised from it rolls everything back."""
        meta_json = json.dumps(metadata, sort_keys=True, separators=(",", ":")) if metadata else None
        with self.transaction():
            versions = self._versions(key)
            newest = versions.get(PENDING_VERSION) or versions.get(LIVE)
            if newest is not None and (newest["content_hash"], newest["title"], newest["content_type"],
                                       newest["metadata"]) == (content_hash, title, content_type, meta_json):
                return PutResult("unchanged", key, newest["version"], newest["id"])
            superseded = None
            if PENDING_VERSION in versions:
                superseded = versions[PENDING_VERSION]["version"]
                self._kill([versions[PENDING_VERSION]["id"]])
            version = 1 + (self.conn.execute("SELECT max(version) FROM documents WHERE key=?",
                                             (key,)).fetchone()[0] or 0)
            status = PENDING_VERSION if LIVE in versions else LIVE
            doc_id = self.conn.execute(
                "INSERT INTO documents(key, version, status, content_hash, source, title, content_type, "
                "metadata, bytes, created, changed_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, version, status, content_hash, source, title, content_type, meta_json, size,
                 time.time(), self._bump_visibility())).lastrowid
            n = reused = 0
            rows: list[tuple[int, int, str, str, str, int | None, str | None]] = []
            for position, text, digest, *where in chunks:
                state = COPY if self._embedded(digest) else "pending"
                reused += state == COPY
                page, heading = where or (None, None)
                rows.append((doc_id, position, text, digest, state, page, heading))
                if len(rows) >= batch:
                    n += self._insert_chunks(rows)
            n += self._insert_chunks(rows)
            self.conn.execute("UPDATE documents SET n_chunks=? WHERE id=?", (n, doc_id))
            if status == PENDING_VERSION and n == 0:
                self._promote([doc_id])  # nothing to wait for
            outcome = "replaced" if status == PENDING_VERSION else "added"
            return PutResult(outcome, key, version, doc_id, n, reused, superseded)

    def delete_document(self, key: str) -> int:
        """Make every version of `key` dead in one transaction; returns how many versions
        were. NotFound when the key has no live or pending version."""
        with self.transaction():
            ids = [r[0] for r in self.conn.execute(
                "SELECT id FROM documents WHERE key=? AND status != 'dead'", (key,))]
            if not ids:
                raise NotFound(f"no document with key {key!r}")
            self._kill(ids)
            return len(ids)

    def _kill(self, doc_ids: list[int]) -> None:
        """Versions to dead, their chunks dropped (their rows become tombstones)."""
        seq = self._bump_visibility()
        for doc_id in doc_ids:
            self.conn.execute("UPDATE documents SET status='dead', changed_seq=? WHERE id=?", (seq, doc_id))
            self.conn.execute("UPDATE chunks SET state='dropped', lease_owner=NULL, lease_expires=NULL "
                              "WHERE doc_id=?", (doc_id,))

    def _promote(self, doc_ids: Iterable[int]) -> list[int]:
        """Make each pending version whose chunks are all indexed live, and the version it
        replaces dead; called inside the commit transaction. Returns the promoted ids."""
        promoted = []
        for doc_id in doc_ids:
            row = self.conn.execute("SELECT key FROM documents WHERE id=? AND status='pending'",
                                    (doc_id,)).fetchone()
            if row is None or self.conn.execute(
                    "SELECT 1 FROM chunks WHERE doc_id=? AND state != 'indexed' LIMIT 1", (doc_id,)).fetchone():
                continue
            old = [r[0] for r in self.conn.execute(
                "SELECT id FROM documents WHERE key=? AND status='live'", (row[0],))]
            self._kill(old)  # first: one live version per key, checked per statement
            self.conn.execute("UPDATE documents SET status='live', changed_seq=? WHERE id=?",
                              (self._bump_visibility(), doc_id))
            promoted.append(doc_id)
        return promoted

    def _bump_visibility(self) -> int:
        """Advance the visibility sequence (inside the caller's transaction); returns it."""
        seq = int(self.get_meta("visibility_seq", "0")) + 1
        self._set_meta("visibility_seq", str(seq))
        return seq

    def _embedded(self, digest: str) -> bool:
        return self.conn.execute("SELECT 1 FROM chunks WHERE hash=? AND row IS NOT NULL LIMIT 1",
                                 (digest,)).fetchone() is not None

    def _versions(self, key: str) -> dict[str, dict]:
        cur = self.conn.execute(
            "SELECT id, version, status, content_hash, title, content_type, metadata FROM documents "
            "WHERE key=? AND status != 'dead'", (key,))
        names = [d[0] for d in cur.description]
        return {r[2]: dict(zip(names, r)) for r in cur}

    # --- the indexer's copies --------------------------------------------------------
    def claim_copies(self, limit: int) -> list[tuple[int, int]]:
        """(chunk id, row holding the same text's vector) of up to `limit` copy chunks; a
        copy whose vector is gone (compacted away) goes back to pending, to be embedded."""
        found = self.conn.execute(
            "SELECT c.id, (SELECT s.row FROM chunks s WHERE s.hash = c.hash AND s.row IS NOT NULL LIMIT 1) "
            "FROM chunks c WHERE c.state='copy' ORDER BY c.id LIMIT ?", (limit,)).fetchall()
        gone = [cid for cid, row in found if row is None]
        if gone:
            with self.transaction():
                self.conn.executemany("UPDATE chunks SET state='pending' WHERE id=? AND state='copy'",
                                      [(cid,) for cid in gone])
        return [(cid, row) for cid, row in found if row is not None]

    def has_copies(self) -> bool:
        return self.conn.execute("SELECT 1 FROM chunks WHERE state='copy' LIMIT 1").fetchone() is not None

    # --- readers ---------------------------------------------------------------------
    def document(self, key: str) -> dict:
        """The live and pending versions of `key` with their chunk counts by state;
        NotFound when it has neither."""
        out: dict[str, Any] = {"key": key}
        for status, v in self._versions(key).items():
            counts = dict(self.conn.execute("SELECT state, count(*) FROM chunks WHERE doc_id=? GROUP BY state",
                                            (v["id"],)).fetchall())
            out[status] = self._describe(v["id"], counts)
        if len(out) == 1:
            raise NotFound(f"no document with key {key!r}")
        return out

    def _describe(self, doc_id: int, counts: dict[str, int]) -> dict:
        row = self.conn.execute(
            "SELECT version, title, source, content_type, metadata, bytes, n_chunks, created FROM documents "
            "WHERE id=?", (doc_id,)).fetchone()
        version, title, source, ctype, meta_json, size, n, created = row
        return {"version": version, "doc_id": doc_id, "title": title, "source": source,
                "content_type": ctype, "metadata": json.loads(meta_json) if meta_json else {},
                "bytes": size, "chunks": n, "created": created, "chunk_states": counts}

    def documents(self, *, state: str | None = None, after: str = "", limit: int = 100) -> list[dict]:
        """Documents in key order after the key `after`, `limit` keys at most (a key's live
        and pending versions always on one page): key, status, version, title, chunks, and
        indexed and failed chunk counts. `state` filters: live, pending (a replacement
        being embedded), failed (a version with failed chunks), or None (live and pending)."""
        if state == "failed":
            keys = [r[0] for r in self.conn.execute(
                "SELECT DISTINCT d.key FROM chunks c JOIN documents d ON d.id = c.doc_id "
                "WHERE c.state='failed' AND d.key > ? ORDER BY d.key LIMIT ?", (after, limit))]
            states = [LIVE, PENDING_VERSION]
        else:
            states = [state] if state else [LIVE, PENDING_VERSION]
            marks = ",".join("?" * len(states))
            keys = [r[0] for r in self.conn.execute(
                f"SELECT DISTINCT key FROM documents WHERE status IN ({marks}) AND key > ? ORDER BY key LIMIT ?",
                (*states, after, limit))]
        out = []
        for key in keys:
            for doc_id, status, version, title, n in self.conn.execute(
                    f"SELECT id, status, version, title, n_chunks FROM documents WHERE key=? "
                    f"AND status IN ({','.join('?' * len(states))}) ORDER BY version", (key, *states)):
                counts = dict(self.conn.execute("SELECT state, count(*) FROM chunks WHERE doc_id=? GROUP BY state",
                                                (doc_id,)).fetchall())
                if state == "failed" and not counts.get("failed"):
                    continue
                out.append({"key": key, "status": status, "version": version, "title": title, "chunks": n,
                            "indexed": counts.get("indexed", 0), "failed": counts.get("failed", 0)})
        return out

    def keys_with_prefix(self, prefix: str) -> list[str]:
        """Keys with a live or pending version that start with `prefix` (`ingest --sync`)."""
        hi = prefix + "\U0010ffff"
        return [r[0] for r in self.conn.execute(
            "SELECT DISTINCT key FROM documents WHERE key >= ? AND key < ? AND status != 'dead' ORDER BY key",
            (prefix, hi))]

    def live_keys_with_hash(self, content_hash: str) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT key FROM documents WHERE content_hash=? AND status != 'dead'", (content_hash,))]

    def newest_version(self, key: str) -> tuple[str, str] | None:
        """(content hash, title) of the newest live or pending version of `key`."""
        v = self._versions(key)
        newest = v.get(PENDING_VERSION) or v.get(LIVE)
        return (newest["content_hash"], newest["title"]) if newest else None

    # --- the query server's view -----------------------------------------------------
    def snapshot(self) -> "_Snapshot":
        """A read transaction: every read inside it sees one committed state (WAL)."""
        return _Snapshot(self.conn)

    def visibility(self) -> Visibility:
        meta = dict(self.conn.execute(
            "SELECT key, value FROM meta WHERE key IN ('vectors_epoch', 'visibility_seq', 'committed_rows')"))
        return Visibility(int(meta.get("vectors_epoch", 0)), int(meta.get("visibility_seq", 0)),
                          int(meta.get("committed_rows", 0)))

    def hidden_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows in [start, stop) a query must not see: those of dead and pending versions."""
        if stop - start > RANGE_SCAN_ROWS:
            dropped = self.conn.execute(
                "SELECT row FROM chunks WHERE state='dropped' AND row >= ? AND row < ?", (start, stop)).fetchall()
            pending = self.conn.execute(
                "SELECT c.row FROM documents d JOIN chunks c ON c.doc_id = d.id WHERE d.status='pending' "
                "AND c.row >= ? AND c.row < ?", (start, stop)).fetchall()
            found = dropped + pending
        else:
            found = self.conn.execute(
                "SELECT c.row FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE c.row >= ? AND c.row < ? "
                "AND (c.state = 'dropped' OR d.status != 'live')", (start, stop)).fetchall()
        import numpy as np
        return np.fromiter((r[0] for r in found), dtype=np.int64, count=len(found))

    def changed_rows(self, since_seq: int, below: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows now hidden, rows now visible) below `below`, of the documents whose status
        changed after visibility sequence `since_seq`."""
        # CROSS JOIN keeps documents outer (through documents_changed): left to itself the
        # planner walks every chunk by its row range, O(rows) per change (13 ms at 100k rows).
        found = self.conn.execute(
            "SELECT c.row, d.status = 'live' AND c.state != 'dropped' FROM documents d "
            "CROSS JOIN chunks c ON c.doc_id = d.id WHERE d.changed_seq > ? AND c.row IS NOT NULL AND c.row < ?",
            (since_seq, below)).fetchall()
        import numpy as np
        rows = np.array([r[0] for r in found], dtype=np.int64)
        shown = np.array([bool(r[1]) for r in found], dtype=bool)
        return rows[~shown], rows[shown]

    def dead_rows(self) -> int:
        """Rows held by dropped chunks: what a compaction would give back."""
        return self.conn.execute("SELECT count(*) FROM chunks WHERE state='dropped' AND row IS NOT NULL"
                                 ).fetchone()[0]


class _Snapshot:
    """BEGIN ... COMMIT of a read-only transaction; nested use joins the open one."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.outer = not self.conn.in_transaction
        if self.outer:
            self.conn.execute("BEGIN")
        return self.conn

    def __exit__(self, *exc: object) -> None:
        if self.outer:
            self.conn.execute("COMMIT")
