"""Numbered schema migrations of the document store.

Each entry upgrades the schema by one version inside one transaction; `meta.schema_version`
records how far a database has come. Append new migrations, never edit an applied one: a
store created by an older release must upgrade to exactly the schema a new one would create.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE documents (
        id           INTEGER PRIMARY KEY,
        content_hash TEXT NOT NULL UNIQUE,   -- sha256 of the file's bytes
        source       TEXT NOT NULL,          -- path it was ingested from
        title        TEXT NOT NULL,
        bytes        INTEGER NOT NULL,
        n_chunks     INTEGER NOT NULL DEFAULT 0,
        created      REAL NOT NULL
    );
    CREATE TABLE chunks (
        id            INTEGER PRIMARY KEY,
        doc_id        INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        position      INTEGER NOT NULL,
        text          TEXT NOT NULL,
        hash          TEXT NOT NULL,          -- sha256 of the chunk text
        state         TEXT NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'leased', 'indexed', 'failed')),
        lease_owner   TEXT,
        lease_expires REAL,
        attempts      INTEGER NOT NULL DEFAULT 0,
        error         TEXT,
        row           INTEGER UNIQUE,         -- row in the vectors file once indexed
        UNIQUE (doc_id, position)
    );
    -- the claim query scans pending and leased chunks in id order
    CREATE INDEX chunks_state ON chunks(state, id);
    """),
    (2, """
    -- when each chunk was committed: progress rates and ETAs without a running supervisor
    ALTER TABLE chunks ADD COLUMN indexed_at REAL;
    CREATE INDEX chunks_indexed_at ON chunks(indexed_at);
    """),
    (3, """
    -- Documents that change (issue 17): a document is a key with versions, at most one
    -- live and one pending. The chunks of a dead version are 'dropped' (their rows, if
    -- any, are tombstones until compaction). A chunk whose text was already embedded
    -- is a 'copy' the indexer fills from that vector. Both tables are rebuilt (SQLite
    -- cannot change a CHECK or drop a UNIQUE), and the store runs migrations with foreign
    -- keys off, so dropping the old tables cascades nothing.
    CREATE TABLE documents_v3 (
        id           INTEGER PRIMARY KEY,
        key          TEXT NOT NULL,          -- client-chosen, a resolved path for files
        version      INTEGER NOT NULL,       -- 1, 2, ... per key
        status       TEXT NOT NULL CHECK (status IN ('live', 'pending', 'dead')),
        content_hash TEXT NOT NULL,          -- sha256 of the content's bytes
        source       TEXT NOT NULL,          -- where it came from: a path, or "put"
        title        TEXT NOT NULL,
        content_type TEXT NOT NULL DEFAULT 'text/plain',
        metadata     TEXT,                   -- a JSON map of scalars, or NULL
        bytes        INTEGER NOT NULL,
        n_chunks     INTEGER NOT NULL DEFAULT 0,
        created      REAL NOT NULL,
        changed_seq  INTEGER NOT NULL DEFAULT 0,  -- meta visibility_seq of its last status change
        UNIQUE (key, version)
    );
    INSERT INTO documents_v3(id, key, version, status, content_hash, source, title, bytes, n_chunks,
                             created)
        SELECT d.id, d.source,
               (SELECT count(*) FROM documents o WHERE o.source = d.source AND o.id <= d.id),
               CASE WHEN d.id = (SELECT max(o.id) FROM documents o WHERE o.source = d.source)
                    THEN 'live' ELSE 'dead' END,
               d.content_hash, d.source, d.title, d.bytes, d.n_chunks, d.created
        FROM documents d;
    CREATE TABLE chunks_v3 (
        id            INTEGER PRIMARY KEY,
        doc_id        INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        position      INTEGER NOT NULL,
        text          TEXT NOT NULL,
        hash          TEXT NOT NULL,          -- sha256 of the chunk text
        state         TEXT NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'leased', 'indexed', 'failed', 'copy', 'dropped')),
        lease_owner   TEXT,
        lease_expires REAL,
        attempts      INTEGER NOT NULL DEFAULT 0,
        error         TEXT,
        row           INTEGER UNIQUE,         -- row in the vectors file once indexed
        indexed_at    REAL,
        UNIQUE (doc_id, position)
    );
    INSERT INTO chunks_v3(id, doc_id, position, text, hash, state, lease_owner, lease_expires, attempts,
                          error, row, indexed_at)
        SELECT c.id, c.doc_id, c.position, c.text, c.hash,
               CASE WHEN d.status = 'dead' THEN 'dropped' ELSE c.state END,
               c.lease_owner, c.lease_expires, c.attempts, c.error, c.row, c.indexed_at
        FROM chunks c JOIN documents_v3 d ON d.id = c.doc_id;
    DROP TABLE chunks;
    DROP TABLE documents;
    ALTER TABLE documents_v3 RENAME TO documents;
    ALTER TABLE chunks_v3 RENAME TO chunks;
    CREATE UNIQUE INDEX documents_live ON documents(key) WHERE status = 'live';
    CREATE UNIQUE INDEX documents_pending ON documents(key) WHERE status = 'pending';
    CREATE INDEX documents_status ON documents(status, key);
    CREATE INDEX documents_changed ON documents(changed_seq);
    CREATE INDEX documents_hash ON documents(content_hash);
    CREATE INDEX chunks_state ON chunks(state, id);
    CREATE INDEX chunks_indexed_at ON chunks(indexed_at);
    -- vectors already bought, by text: a new version's unchanged chunks reuse them
    CREATE INDEX chunks_hash ON chunks(hash) WHERE row IS NOT NULL;
    """),
    # Where a chunk came from (issue 18): the page of its first word (PDF, 1-based) and the
    # heading path above it (HTML, Word, Markdown: "Methods > Dosing"); NULL when unknown.
    (4, """
    ALTER TABLE chunks ADD COLUMN page INTEGER;
    ALTER TABLE chunks ADD COLUMN heading TEXT;
    """),
    # Hybrid search (issue 19). The lexical index: FTS5 over chunk text, external content
    # (the text is stored once, in chunks), porter stemming over unicode61 tokens. Triggers
    # keep it in the very transactions that add and remove chunks; it holds every chunk
    # (dropped ones until compaction deletes them), and the lexical query keeps the live
    # ones. Chunk counts by state, for the coverage every answer carries, are kept the
    # same way, so reading them is one tiny table. A migration that rebuilds `chunks` must
    # create these triggers again.
    (5, """
    CREATE VIRTUAL TABLE chunks_fts USING fts5(
        text, content='chunks', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2');
    INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild');
    CREATE TRIGGER chunks_fts_add AFTER INSERT ON chunks BEGIN
        INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER chunks_fts_remove AFTER DELETE ON chunks BEGIN
        INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END;
    CREATE TRIGGER chunks_fts_change AFTER UPDATE OF text ON chunks BEGIN
        INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
        INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TABLE chunk_counts (
        state TEXT PRIMARY KEY,
        n     INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO chunk_counts(state, n)
        SELECT s.state, (SELECT count(*) FROM chunks c WHERE c.state = s.state)
        FROM (SELECT 'pending' AS state UNION ALL SELECT 'leased' UNION ALL SELECT 'indexed'
              UNION ALL SELECT 'failed' UNION ALL SELECT 'copy' UNION ALL SELECT 'dropped') s;
    CREATE TRIGGER chunk_counts_add AFTER INSERT ON chunks BEGIN
        UPDATE chunk_counts SET n = n + 1 WHERE state = new.state;
    END;
    CREATE TRIGGER chunk_counts_remove AFTER DELETE ON chunks BEGIN
        UPDATE chunk_counts SET n = n - 1 WHERE state = old.state;
    END;
    CREATE TRIGGER chunk_counts_change AFTER UPDATE OF state ON chunks WHEN old.state != new.state BEGIN
        UPDATE chunk_counts SET n = n - 1 WHERE state = old.state;
        UPDATE chunk_counts SET n = n + 1 WHERE state = new.state;
    END;
    """),
]


def statements(sql: str):
    """The statements of a migration, one by one: split at semicolons that end a statement
    (a trigger's body holds several)."""
    pending = ""
    for piece in sql.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending.strip()
            pending = ""
    if pending.strip(" \n;"):
        raise ValueError(f"incomplete statement in a migration: {pending.strip()[:80]!r}")

LATEST = MIGRATIONS[-1][0]
