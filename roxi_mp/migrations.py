"""Numbered schema migrations of the document store.

Each entry upgrades the schema by one version inside one transaction; `meta.schema_version`
records how far a database has come. Append new migrations, never edit an applied one: a
store created by an older release must upgrade to exactly the schema a new one would create.
"""

from __future__ import annotations

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
]

LATEST = MIGRATIONS[-1][0]
