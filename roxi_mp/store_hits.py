"""The query side of the store: the chunk and document fields of the rows a search found.

This runs inside every query, right after a scan of the vectors has flushed the CPU
caches, so it does as little as it can: one indexed lookup per row on the chunks table,
and document titles and sources from a bounded per-connection cache (documents never
change once stored) instead of a join. `HitLookup` is a part of `Store` (a mixin over its
connection), kept in its own module because only the query server uses it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Sequence

#: document titles and sources a connection keeps for `hits`
DOC_CACHE_ENTRIES = 10_000


@dataclass(frozen=True)
class Hit:
    row: int
    chunk_id: int
    doc_id: int
    position: int
    title: str
    source: str
    text: str


class HitLookup:
    """`Store.hits`: vector rows to reply fields."""

    # provided by Store (which creates the cache empty, once per connection)
    conn: sqlite3.Connection
    _doc_cache: dict[int, tuple[str, str]]

    def hits(self, rows: Sequence[int], *, with_text: bool = True) -> dict[int, Hit]:
        """Chunk and document fields for the given vector rows (only what a reply needs)."""
        out: dict[int, Hit] = {}
        if not rows:
            return out
        marks = ",".join("?" * len(rows))
        found = self.conn.execute(
            f"SELECT row, id, doc_id, position{', text' if with_text else ''} FROM chunks WHERE row IN ({marks})",
            [int(r) for r in rows]).fetchall()
        docs = self._documents({r[2] for r in found})
        for r in found:
            if r[2] in docs:
                out[r[0]] = Hit(r[0], r[1], r[2], r[3], *docs[r[2]], r[4] if with_text else "")
        return out

    def _documents(self, ids: set[int]) -> dict[int, tuple[str, str]]:
        """(title, source) of documents, cached (bounded) for the life of this connection."""
        missing = [i for i in ids if i not in self._doc_cache]
        if missing:
            if len(self._doc_cache) + len(missing) > DOC_CACHE_ENTRIES:
                self._doc_cache.clear()
            marks = ",".join("?" * len(missing))
            for doc_id, title, source in self.conn.execute(
                    f"SELECT id, title, source FROM documents WHERE id IN ({marks})", missing):
                self._doc_cache[doc_id] = (title, source)
        return {i: self._doc_cache[i] for i in ids if i in self._doc_cache}
