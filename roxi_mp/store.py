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
from .store_hits import Hit, HitLookup
from .store_leases import FAILED, INDEXED, LEASED, PARAMETER_BATCH, PENDING, ChunkLeases

if TYPE_CHECKING:
    from .config import Config

#: the names other modules import from here, wherever they are defined
__all__ = ["FAILED", "INDEXED", "LEASED", "PENDING", "Hit", "Stats", "Store"]

#: meta keys
META_SCHEMA = "schema_version"
META_MODEL = "model_id"
META_DIM = "dim"
META_ROWS = "committed_rows"
META_GENERATION = "generation"
META_PAUSED = "paused"


@dataclass(frozen=True)
class Stats:
    documents: int
    chunks: int
    pending: int
    leased: int
    indexed: int
    failed: int
    committed_rows: int

    @property
    def percent(self) -> float:
        return 100.0 * self.indexed / self.chunks if self.chunks else 0.0

    def as_dict(self) -> dict:
        return {**self.__dict__, "percent": round(self.percent, 2)}


class Store(ChunkLeases, HitLookup):
    """A connection to the document store; cheap to open, one per process or thread.

    The embedders' lease methods (claim, release, renew, ...) come from ChunkLeases in
    roxi_mp.store_leases, the query server's `hits` from HitLookup in roxi_mp.store_hits.
    """

    def __init__(self, path: Path | str, *, busy_timeout_ms: int = 10_000, migrate: bool = True) -> None:
        self.path = Path(path)
        self._doc_cache: dict[int, tuple[str, str]] = {}  # HitLookup's, valid for this connection
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=busy_timeout_ms / 1000,
                                        isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot open the store ({exc})") from None
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            if migrate:
                self._migrate()
            else:
                self._check_schema()
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
                for statement in sql.split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self._set_meta(META_SCHEMA, str(number))
            for key, default in ((META_ROWS, "0"), (META_GENERATION, "0")):
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
            self.conn.execute("UPDATE chunks SET state='pending', row=NULL, lease_owner=NULL, "
                              "lease_expires=NULL, attempts=0, error=NULL")
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

    # --- documents ---------------------------------------------------------------
    def has_document(self, content_hash: str) -> bool:
        return self.conn.execute("SELECT 1 FROM documents WHERE content_hash=?",
                                 (content_hash,)).fetchone() is not None

    def add_document(self, *, content_hash: str, source: str, title: str, size: int,
                     chunks: Iterable[tuple[int, str, str]], batch: int = 512) -> int | None:
        """Insert a document and its (position, text, hash) chunks in one transaction.

        Returns the document id, or None when an identical document is already stored.
        The chunk iterable may be a lazy stream: a huge file is never held whole, and an
        error raised while streaming rolls the whole document back.
        """
        with self.transaction():
            if self.has_document(content_hash):
                return None
            doc_id = self.conn.execute(
                "INSERT INTO documents(content_hash, source, title, bytes, created) "
                "VALUES (?, ?, ?, ?, ?)", (content_hash, source, title, size, time.time())).lastrowid
            n = 0
            pending: list[tuple[int, int, str, str]] = []
            for position, text, digest in chunks:
                pending.append((doc_id, position, text, digest))
                if len(pending) >= batch:
                    n += self._insert_chunks(pending)
            n += self._insert_chunks(pending)
            self.conn.execute("UPDATE documents SET n_chunks=? WHERE id=?", (n, doc_id))
            return doc_id

    def _insert_chunks(self, rows: list[tuple[int, int, str, str]]) -> int:
        self.conn.executemany("INSERT INTO chunks(doc_id, position, text, hash) VALUES (?, ?, ?, ?)", rows)
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

    def commit_rows(self, assignments: Sequence[tuple[int, int]], *, rows: int) -> int:
        """Record (chunk_id, row) pairs, mark them indexed and set committed_rows, atomically.

        Must run after the vector rows are durable. Returns the new generation.
        """
        with self.transaction():
            before = self.committed_rows()
            if rows != before + len(assignments):
                raise StoreError(f"commit of {len(assignments)} rows at {before} does not reach {rows}")
            now = time.time()
            cur = self.conn.executemany(
                "UPDATE chunks SET state='indexed', row=?, indexed_at=?, lease_owner=NULL, lease_expires=NULL, "
                "error=NULL WHERE id=? AND row IS NULL", [(row, now, cid) for cid, row in assignments])
            if cur.rowcount != len(assignments):
                raise StoreError(f"commit expected {len(assignments)} unindexed chunks, updated {cur.rowcount}")
            generation = self.generation() + 1
            self._set_meta(META_ROWS, str(rows))
            self._set_meta(META_GENERATION, str(generation))
        return generation

    # --- readers -----------------------------------------------------------------
    def stats(self) -> Stats:
        counts = dict.fromkeys((PENDING, LEASED, INDEXED, FAILED), 0)
        counts.update(self.conn.execute("SELECT state, count(*) FROM chunks GROUP BY state").fetchall())
        documents = self.conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        return Stats(documents=documents, chunks=sum(counts.values()), pending=counts[PENDING],
                     leased=counts[LEASED], indexed=counts[INDEXED], failed=counts[FAILED],
                     committed_rows=self.committed_rows())

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
