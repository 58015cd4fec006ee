"""The document store: one SQLite database (WAL) holding documents, chunks and meta.

Every process opens its own connection. Writers are few and short: `roxi ingest` adds
documents, embedders claim chunks with a lease, and the indexer, the single writer of the
`indexed` state, records vector rows in the same transaction that advances
`committed_rows` (the SQLite half of the commit protocol, see roxi_mp.roles.indexer).
Transactions use BEGIN IMMEDIATE so two writers never deadlock on a lock upgrade, and
synchronous=FULL so a committed batch survives power loss, not only a killed process.
`Store` is one class over one connection; the embedders' lease queue (roxi_mp.store_leases)
and the query server's hit lookup (roxi_mp.store_hits) are written in their own modules.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

from . import migrations
from .errors import ModelMismatch, StoreError
from .store_docs import COPY, DROPPED, DocumentVersions, PutResult
from .store_hits import Hit, HitLookup
from .store_leases import FAILED, INDEXED, LEASED, PARAMETER_BATCH, PENDING, ChunkLeases

if TYPE_CHECKING:
    from .config import Config

#: the names other modules import from here, wherever they are defined
__all__ = ["COPY", "DROPPED", "FAILED", "INDEXED", "LEASED", "PENDING", "Hit", "PutResult", "Stats", "Store"]

#: meta keys
META_SCHEMA = "schema_version"
META_MODEL = "model_id"
META_DIM = "dim"
META_ROWS = "committed_rows"
META_GENERATION = "generation"
META_PAUSED = "paused"
#: which vectors file is current (Config.vectors_file); compaction moves to the next
META_EPOCH = "vectors_epoch"
#: bumped by every transaction that changes which rows a query may see
META_VISIBILITY = "visibility_seq"
#: vectors copied from an identical chunk's row instead of being embedded again
META_REUSED = "reused_vectors"


@dataclass(frozen=True)
class Stats:
    documents: int
    chunks: int
    pending: int
    leased: int
    indexed: int
    failed: int
    committed_rows: int
    replacing: int = 0  # documents with a new version being embedded
    dead_rows: int = 0  # rows of dead versions, until compaction
    reused: int = 0  # vectors copied instead of embedded again, ever

    @property
    def live_rows(self) -> int:
        return self.committed_rows - self.dead_rows

    @property
    def percent(self) -> float:
        return 100.0 * self.indexed / self.chunks if self.chunks else 0.0

    def as_dict(self) -> dict:
        return {**self.__dict__, "percent": round(self.percent, 2), "live_rows": self.live_rows}


class Store(ChunkLeases, HitLookup, DocumentVersions):
    """A connection to the document store; cheap to open, one per process or thread.

    The embedders' lease methods (claim, release, renew, ...) come from ChunkLeases in
    roxi_mp.store_leases, the query server's `hits` from HitLookup in roxi_mp.store_hits.
    """

    def __init__(self, path: Path | str, *, busy_timeout_ms: int = 10_000, migrate: bool = True) -> None:
        self.path = Path(path)
        self._doc_cache: dict[int, tuple[str, str]] = {}  # HitLookup's, valid for this connection
        self._frequencies: dict[str, int] = {}  # HitLookup's: chunks holding each query word
        self._frequency_base = 0  # chunks in the library when _frequencies was started
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=busy_timeout_ms / 1000,
                                        isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot open the store ({exc})") from None
        try:
            if migrate and self._schema_version() == 0:
                # Only an empty database can switch: compaction then gives freed pages back.
                self.conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            if migrate:
                # Off while migrating: a migration rebuilding a table must not cascade its drop.
                self._migrate()
            else:
                self._check_schema()
            self.conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise StoreError(f"{self.path}: not a usable roxi store ({exc})") from None
        except StoreError:
            self.conn.close()
            raise

    @classmethod
    def open(cls, cfg: "Config", *, migrate: bool = True) -> "Store":
        """The store of a configuration, with its busy timeout."""
        return cls(cfg.db_path, busy_timeout_ms=cfg.store.busy_timeout_ms, migrate=migrate)

    # --- schema ------------------------------------------------------------------
    def _schema_version(self) -> int:
        has_meta = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not has_meta:
            return 0
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (META_SCHEMA,)).fetchone()
        return int(row[0]) if row else 0

    def _check_schema(self) -> None:
        version = self._schema_version()
        if version > migrations.LATEST:
            raise StoreError(f"{self.path}: schema version {version} is newer than this roxi-mp "
                             f"understands ({migrations.LATEST}); upgrade roxi-mp")
        if version < migrations.LATEST:
            raise StoreError(f"{self.path}: schema version {version} needs migrating")

    def _migrate(self) -> None:
        with self.transaction():
            version = self._schema_version()
            if version > migrations.LATEST:
                raise StoreError(f"{self.path}: schema version {version} is newer than this "
                                 f"roxi-mp understands ({migrations.LATEST}); upgrade roxi-mp")
            for number, sql in migrations.MIGRATIONS:
                if number <= version:
                    continue
                for statement in migrations.statements(sql):
                    self.conn.execute(statement)
                self._set_meta(META_SCHEMA, str(number))
            for key, default in ((META_ROWS, "0"), (META_GENERATION, "0"), (META_EPOCH, "0"),
                                 (META_VISIBILITY, "0"), (META_REUSED, "0")):
                self.conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", (key, default))

    # --- plumbing ----------------------------------------------------------------
    def transaction(self) -> "_Transaction":
        return _Transaction(self.conn)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def _set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                          "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    # --- model identity ----------------------------------------------------------
    def model(self) -> tuple[str, int] | None:
        model_id, dim = self.get_meta(META_MODEL), self.get_meta(META_DIM)
        return (model_id, int(dim)) if model_id is not None and dim is not None else None

    @staticmethod
    def recorded_model(db_path: Path) -> str | None:
        """The model id a store was built with, read without opening it for writing (no
        migration, no lock): None when there is no store yet or it records no model."""
        try:
            conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10.0)
        except sqlite3.Error:
            return None
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (META_MODEL,)).fetchone()
        except sqlite3.Error:  # a store created but not yet migrated
            return None
        finally:
            conn.close()
        return row[0] if row else None

    def ensure_model(self, model_id: str, dim: int) -> None:
        """Record the embedding model on first use; refuse a different one afterwards."""
        with self.transaction():
            recorded = self.model()
            if recorded is None:
                self._set_meta(META_MODEL, model_id)
                self._set_meta(META_DIM, str(dim))
            elif recorded != (model_id, dim):
                raise ModelMismatch(
                    f"store was built with model {recorded[0]!r} (dim {recorded[1]}), "
                    f"refusing embedder {model_id!r} (dim {dim})")

    def reset_for_model(self, model_id: str, dim: int) -> None:
        """Forget every vector row (a copy of the store about to be embedded anew)."""
        with self.transaction():
            self.conn.execute("UPDATE chunks SET state=CASE state WHEN 'dropped' THEN 'dropped' ELSE 'pending' END, "
                              "row=NULL, lease_owner=NULL, lease_expires=NULL, attempts=0, error=NULL")
            self._set_meta(META_MODEL, model_id)
            self._set_meta(META_DIM, str(dim))
            self._set_meta(META_ROWS, "0")

    def backup_to(self, path: Path) -> None:
        """A consistent copy through SQLite's online backup API (never a file copy of a WAL db)."""
        target = sqlite3.connect(str(path))
        try:
            with target:
                self.conn.backup(target)
        finally:
            target.close()

    # --- documents (versions, replace and delete: roxi_mp.store_docs) ---------------
    def has_document(self, content_hash: str) -> bool:
        """A live or pending version holds exactly this content."""
        return self.conn.execute("SELECT 1 FROM documents WHERE content_hash=? AND status != 'dead' LIMIT 1",
                                 (content_hash,)).fetchone() is not None

    def add_document(self, *, content_hash: str, source: str, title: str, size: int,
                     chunks: Iterable[tuple[int, str, str]], batch: int = 512) -> int | None:
        """Put a document keyed by its source; returns its id, or None when unchanged."""
        result = self.put_document(key=source, content_hash=content_hash, source=source, title=title,
                                   size=size, chunks=chunks, batch=batch)
        return None if result.outcome == "unchanged" else result.doc_id

    def _insert_chunks(self, rows: list[tuple[int, int, str, str, str, int | None, str | None]]) -> int:
        """Insert (doc_id, position, text, hash, state, page, heading) rows and empty the list."""
        self.conn.executemany("INSERT INTO chunks(doc_id, position, text, hash, state, page, heading) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        n = len(rows)
        rows.clear()
        return n

    # --- indexer side: the commit ------------------------------------------------
    def committed_rows(self) -> int:
        return int(self.get_meta(META_ROWS, "0"))

    def generation(self) -> int:
        return int(self.get_meta(META_GENERATION, "0"))

    def unindexed(self, chunk_ids: Iterable[int]) -> set[int]:
        """Those of `chunk_ids` that exist and have no vector row yet."""
        ids = list(dict.fromkeys(chunk_ids))
        found: set[int] = set()
        for start in range(0, len(ids), PARAMETER_BATCH):
            part = ids[start:start + PARAMETER_BATCH]
            marks = ",".join("?" * len(part))
            found.update(r[0] for r in self.conn.execute(
                f"SELECT id FROM chunks WHERE id IN ({marks}) AND row IS NULL", part))
        return found

    def commit_rows(self, assignments: Sequence[tuple[int, int]], *, rows: int, reused: int = 0) -> int:
        """Record (chunk_id, row) pairs, mark them indexed and set committed_rows, atomically;
        make live each replacement version this completes (roxi_mp.store_docs). `reused`
        of the rows were copied from an identical chunk's vector, not embedded.

        Must run after the vector rows are durable. Returns the new generation. A chunk
        dropped meanwhile (its version deleted) still takes its row, as a tombstone.
        """
        with self.transaction():
            before = self.committed_rows()
            if rows != before + len(assignments):
                raise StoreError(f"commit of {len(assignments)} rows at {before} does not reach {rows}")
            now = time.time()
            cur = self.conn.executemany(
                "UPDATE chunks SET state=CASE state WHEN 'dropped' THEN 'dropped' ELSE 'indexed' END, row=?, "
                "indexed_at=?, lease_owner=NULL, lease_expires=NULL, error=NULL WHERE id=? AND row IS NULL",
                [(row, now, cid) for cid, row in assignments])
            if cur.rowcount != len(assignments):
                raise StoreError(f"commit expected {len(assignments)} unindexed chunks, updated {cur.rowcount}")
            self._promote(self._pending_versions_of([cid for cid, _ in assignments]))
            if reused:
                self._set_meta(META_REUSED, str(int(self.get_meta(META_REUSED, "0")) + reused))
            generation = self.generation() + 1
            self._set_meta(META_ROWS, str(rows))
            self._set_meta(META_GENERATION, str(generation))
        return generation

    def _pending_versions_of(self, chunk_ids: list[int]) -> set[int]:
        """The pending versions some of `chunk_ids` belong to (candidates for promotion)."""
        if not self.conn.execute("SELECT 1 FROM documents WHERE status='pending' LIMIT 1").fetchone():
            return set()
        found: set[int] = set()
        for start in range(0, len(chunk_ids), PARAMETER_BATCH):
            part = chunk_ids[start:start + PARAMETER_BATCH]
            found.update(r[0] for r in self.conn.execute(
                f"SELECT DISTINCT c.doc_id FROM chunks c JOIN documents d ON d.id = c.doc_id "
                f"WHERE c.id IN ({','.join('?' * len(part))}) AND d.status='pending'", part))
        return found

    def vectors_epoch(self) -> int:
        """Which vectors file is current (Config.vectors_file); compaction moves it on."""
        return int(self.get_meta(META_EPOCH, "0"))

    def reused_vectors(self) -> int:
        return int(self.get_meta(META_REUSED, "0"))

    # --- readers -----------------------------------------------------------------
    def stats(self) -> Stats:
        counts = dict.fromkeys((PENDING, LEASED, INDEXED, FAILED, COPY, DROPPED), 0)
        # kept by triggers (migration 5): O(1), where counting 1M chunks took tens of ms
        counts.update(self.conn.execute("SELECT state, n FROM chunk_counts").fetchall())
        documents = self.conn.execute("SELECT count(*) FROM documents WHERE status='live'").fetchone()[0]
        replacing = self.conn.execute("SELECT count(*) FROM documents WHERE status='pending'").fetchone()[0]
        # Chunks to copy are work pending, done by the indexer instead of an embedder.
        return Stats(documents=documents, chunks=sum(counts.values()) - counts[DROPPED],
                     pending=counts[PENDING] + counts[COPY], leased=counts[LEASED], indexed=counts[INDEXED],
                     failed=counts[FAILED], committed_rows=self.committed_rows(), replacing=replacing,
                     dead_rows=self.dead_rows(), reused=self.reused_vectors())

    def rate(self, *, now: float, window: float) -> float:
        """Chunks committed per second over the last `window` seconds (or since the first of them)."""
        count, first = self.conn.execute(
            "SELECT count(*), min(indexed_at) FROM chunks WHERE indexed_at > ?", (now - window,)).fetchone()
        if count < 2:
            return 0.0
        return count / max(now - first, 1.0)

    def paused(self) -> bool:
        return self.get_meta(META_PAUSED, "0") == "1"

    def set_paused(self, paused: bool) -> None:
        """Persisted, so a paused system stays paused across restarts."""
        with self.transaction():
            self._set_meta(META_PAUSED, "1" if paused else "0")

    def iter_rows(self) -> Iterator[tuple[int, int]]:
        """(chunk_id, row) of every indexed chunk, for consistency checks."""
        yield from self.conn.execute("SELECT id, row FROM chunks WHERE row IS NOT NULL ORDER BY row")


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception; re-entrant by nesting depth."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.outer = not self.conn.in_transaction
        if self.outer:
            self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self.outer:
            return
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
