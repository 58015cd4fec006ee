"""The query side of the store: the chunk and document fields of the rows a search found.

This runs inside every query, right after a scan of the vectors has flushed the CPU
caches, so it does as little as it can: one indexed lookup per row on the chunks table
joined to its document's status, and document keys, versions, titles and sources from a
bounded per-connection cache instead of reading them each time. A document row never
changes once stored except its status, which is why the status is read every time and the
rest may be cached.

The query server hides the rows of dead and pending versions inside the search, within
the same read snapshot as this lookup, so every row reaching it should be live. As a last
line of defence a row whose chunk is not indexed or whose document is not live is left
out (and logged): a superseded recommendation is never served, even through a bug.
`HitLookup` is a part of `Store` (a mixin over its connection), kept in its own module
because only the query server uses it.

Even one SQLite statement costs 0.1 ms on caches a 100k-row scan has just flushed, so the
query server keeps `RowFields`: the chunk id, document id, position, page and heading of
every row of the current vectors file, read from SQLite a slice at a time while it is
idle. They never change while the file is current: a row is bound to its chunk when it
is committed, and only a compaction renumbers rows, into a new file (a new epoch) the
query server makes new RowFields for (roxi_mp.query_view owns them). Whether a row may be
seen at all is not theirs to say: the hidden rows decide that, in the search.
"""

from __future__ import annotations

import logging
import sqlite3
import struct
from typing import NamedTuple, Sequence

from . import lexical

log = logging.getLogger("roxi.query")

#: documents whose key, version, title and source a connection keeps for `hits`
DOC_CACHE_ENTRIES = 10_000
#: chunks the lexical query asks for beyond those wanted, for ones of versions not live
LEXICAL_SLACK = 20
#: word frequencies a connection remembers for the lexical leg
FREQUENCY_ENTRIES = 100_000
#: a RowFields record: chunk id (0: no chunk holds the row), document id, position, page
#: (-1: unknown) and heading (an index into RowFields.headings, 0: none)
#: (numpy's record type, built when rows are added: a process that never adds any, such as
#: the documents role, never imports numpy)
ROW_FIELDS = [("chunk", "<i8"), ("doc", "<i8"), ("position", "<i4"), ("page", "<i4"), ("heading", "<i4")]
#: the same record for struct, which reads ten of them faster than numpy indexing
RECORD = struct.Struct("<qqiii")


class Hit(NamedTuple):  # a tuple: the query server builds ten of them per query
    row: int | None  # None: not embedded yet (found by its words alone)
    chunk_id: int
    doc_id: int
    key: str
    version: int
    position: int
    title: str
    source: str
    text: str
    page: int | None = None  # of the chunk's first word (PDF)
    heading: str | None = None  # path of the headings above it (HTML, Word, Markdown)


class HitLookup:
    """`Store.hits`: vector rows to reply fields."""

    # provided by Store (which creates the cache empty, once per connection)
    conn: sqlite3.Connection
    _doc_cache: dict[int, tuple[str, int, str, str]]
    _frequencies: dict[str, int]
    _frequency_base: int

    def data_version(self) -> int:
        """A number that changes whenever another connection commits (PRAGMA data_version):
        while it stands, whatever this connection read before is still current."""
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def row_fields(self, start: int, stop: int) -> list[tuple]:
        """(row, chunk id, document id, position, page, heading) of the chunks holding rows
        in [start, stop), for RowFields."""
        return self.conn.execute("SELECT row, id, doc_id, position, page, heading FROM chunks "
                                 "WHERE row >= ? AND row < ?", (start, stop)).fetchall()

    def field_hits(self, fields: "RowFields", rows: Sequence[int], *, with_text: bool,
                   live: dict[int, bool]) -> dict[int, Hit]:
        """Like `hits`, from `fields` instead of the chunks table: SQLite is read only for
        texts and for documents not in `live` (whether each is live, kept by the caller
        for as long as nothing is committed) or not cached. As in `hits`, a row of a
        version not live is left out (and logged), and so is a row whose chunk is gone."""
        size, records, unpack = RECORD.size, fields.records, RECORD.unpack_from
        found = [(row, rec) for row in rows if (rec := unpack(records, row * size))[0]]
        cache = self.know_documents([rec[1] for _, rec in found], live)
        texts = self._texts([rec[0] for _, rec in found]) if with_text else None
        out: dict[int, Hit] = {}
        stale = []
        headings = fields.headings
        for row, (chunk_id, doc_id, position, page, heading) in found:
            if not live.get(doc_id):
                stale.append(row)
                continue
            doc = cache.get(doc_id)
            text = "" if texts is None else texts.get(chunk_id)
            if doc is not None and text is not None:
                out[row] = Hit(row, chunk_id, doc_id, doc[0], doc[1], position, doc[2], doc[3], text,
                               None if page < 0 else page, headings[heading])
        if stale:
            log.warning("dropped %d hits that are not live (rows %s): the hidden rows were stale",
                        len(stale), stale[:10])
        return out

    def know_documents(self, doc_ids: list[int], live: dict[int, bool]) -> dict[int, tuple[str, int, str, str]]:
        """The document cache, holding every one of `doc_ids` that exists, with whether each
        is live in `live` (the caller's, kept for as long as nothing is committed); SQLite
        is read only when one of them is not known yet, as is seldom the case after the
        first queries."""
        cache = self._doc_cache
        for doc_id in doc_ids:
            if doc_id not in live or doc_id not in cache:
                self._documents(set(doc_ids), live=live)
                break
        return cache

    def _texts(self, chunk_ids: list[int]) -> dict[int, str]:
        if not chunk_ids:
            return {}
        marks = ",".join("?" * len(chunk_ids))
        return dict(self.conn.execute(f"SELECT id, text FROM chunks WHERE id IN ({marks})", chunk_ids))

    def hits(self, rows: Sequence[int], *, with_text: bool = True) -> dict[int, Hit]:
        """Chunk and document fields of the given vector rows that are live (only what a
        reply needs); a row of a dropped chunk or of a version not live is left out."""
        out: dict[int, Hit] = {}
        if not rows:
            return out
        marks = ",".join("?" * len(rows))
        found = self.conn.execute(
            f"SELECT c.row, c.id, c.doc_id, c.position, c.state = 'indexed' AND d.status = 'live', c.page, c.heading"
            f"{', c.text' if with_text else ''} FROM chunks c JOIN documents d ON d.id = c.doc_id "
            f"WHERE c.row IN ({marks})", [int(r) for r in rows]).fetchall()
        stale = [r[0] for r in found if not r[4]]
        if stale:
            log.warning("dropped %d hits that are not live (rows %s): the hidden rows were stale",
                        len(stale), stale[:10])
        docs = self._documents({r[2] for r in found if r[4]})
        for r in found:
            if r[4] and r[2] in docs:
                key, version, title, source = docs[r[2]]
                out[r[0]] = Hit(row=r[0], chunk_id=r[1], doc_id=r[2], key=key, version=version, position=r[3],
                                title=title, source=source, text=r[7] if with_text else "", page=r[5], heading=r[6])
        return out

    def chunk_hits(self, chunk_ids: Sequence[int], *, with_text: bool = True) -> dict[int, Hit]:
        """Like `hits`, by chunk id, for chunks found by their words alone (they may have no
        row yet: `Hit.row` is then None); only chunks of live versions, never dropped ones."""
        out: dict[int, Hit] = {}
        if not chunk_ids:
            return out
        marks = ",".join("?" * len(chunk_ids))
        found = self.conn.execute(
            f"SELECT c.id, CASE WHEN c.state = 'indexed' THEN c.row END, c.doc_id, c.position, c.state != 'dropped' AND d.status = 'live', c.page, "
            f"c.heading{', c.text' if with_text else ''} FROM chunks c CROSS JOIN documents d ON d.id = c.doc_id "
            f"WHERE c.id IN ({marks})", [int(i) for i in chunk_ids]).fetchall()
        docs = self._documents({r[2] for r in found if r[4]})
        for r in found:
            if r[4] and r[2] in docs:
                key, version, title, source = docs[r[2]]
                out[r[0]] = Hit(row=r[1], chunk_id=r[0], doc_id=r[2], key=key, version=version, position=r[3],
                                title=title, source=source, text=r[7] if with_text else "", page=r[5], heading=r[6])
        return out

    def lexical(self, words: Sequence[str], limit: int, *, budget: int = 2000) -> list[tuple[int, int | None, float]]:
        """The best `limit` chunks of live versions for query words (roxi_mp.lexical.terms,
        never raw user text), best first: (chunk id, row if the chunk is embedded else None,
        bm25 score, larger is better). Chunks are findable by their words from the moment
        they are stored, embedded or not. Only chunks holding one of the rarer words are
        scored (about `budget` chunks: lexical.split_by_frequency), all words count."""
        if limit <= 0 or not words:
            return []
        counts = self._word_counts(words)
        selective, common = lexical.split_by_frequency(words, counts.__getitem__, budget=budget)
        if not any(counts[w] for w in selective):
            return []  # no chunk holds any of them
        match = lexical.expression(selective, common)
        out: list[tuple[int, int | None, float]] = []
        fetch = limit + LEXICAL_SLACK
        while True:
            # The index holds chunks of every version (dead ones until compaction, pending
            # replacements until promoted): ask for more than wanted and keep the live ones,
            # asking again for more only when too many of the best were not. (ORDER BY
            # bm25() measured 1.5x faster than FTS5's own ORDER BY rank.)
            found = self.conn.execute(
                "SELECT rowid, bm25(chunks_fts) AS b FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY b LIMIT ?",
                (match, fetch)).fetchall()
            live = self._live_chunks([r[0] for r in found])
            out = [(cid, live[cid], -b) for cid, b in found if cid in live]
            if len(out) >= limit or len(found) < fetch:
                return out[:limit]
            fetch *= 4

    def _word_counts(self, words: Sequence[str]) -> dict[str, int]:
        """Chunks whose text holds each word (as the index stems it), remembered by this
        connection (closed in deep sleep) until the library grows by a quarter. (The size
        of the library is read once per query, not once per word.)"""
        chunks = self.conn.execute("SELECT sum(n) FROM chunk_counts").fetchone()[0] or 0
        if chunks > self._frequency_base * 1.25 + 100 or len(self._frequencies) > FREQUENCY_ENTRIES:
            self._frequencies.clear()
            self._frequency_base = chunks
        out = {}
        for word in words:
            n = self._frequencies.get(word)
            if n is None:
                n = self.conn.execute("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?",
                                      (f'"{word}"',)).fetchone()[0]
                if n:
                    # Only to choose which words are rare: a count a little stale ranks nothing
                    # wrongly. A word in no chunk is never remembered (counting it costs nothing):
                    # remembered, it would hide the next document holding it.
                    self._frequencies[word] = n
            out[word] = n
        return out

    def _live_chunks(self, chunk_ids: list[int]) -> dict[int, int | None]:
        """{chunk id: row if embedded else None} of the given chunks that a query may see."""
        if not chunk_ids:
            return {}
        marks = ",".join("?" * len(chunk_ids))
        return {cid: (row if state == "indexed" else None) for cid, row, state in self.conn.execute(
            # CROSS JOIN keeps chunks outer: left to itself the planner walks every live
            # document (documents_status) for a few chunk ids, 13 ms at 100k chunks.
            f"SELECT c.id, c.row, c.state FROM chunks c CROSS JOIN documents d ON d.id = c.doc_id "
            f"WHERE c.id IN ({marks}) AND c.state != 'dropped' AND d.status = 'live'", chunk_ids)}

    def coverage(self) -> dict:
        """How much of the library the dense leg covers, and the store's generation:
        {indexed, chunks, percent, pending, failed, generation}. Chunks are those of live
        and pending versions (dropped ones do not count); pending includes leased chunks
        and chunks waiting for a copied vector. Two tiny reads (counts kept by triggers)."""
        n = dict(self.conn.execute("SELECT state, n FROM chunk_counts"))
        chunks = sum(v for state, v in n.items() if state != "dropped")
        indexed = n.get("indexed", 0)
        generation = self.conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return {"indexed": indexed, "chunks": chunks,
                "percent": round(100.0 * indexed / chunks, 1) if chunks else 0.0,
                "pending": n.get("pending", 0) + n.get("leased", 0) + n.get("copy", 0),
                "failed": n.get("failed", 0), "generation": int(generation[0]) if generation else 0}

    def _documents(self, ids: set[int], *, live: dict[int, bool] | None = None
                   ) -> dict[int, tuple[str, int, str, str]]:
        """(key, version, title, source) of documents, cached (bounded) for the life of this
        connection: none of them ever changes. With `live`, whether each is live too, for
        those `live` does not know yet."""
        missing = [i for i in ids if i not in self._doc_cache or (live is not None and i not in live)]
        if missing:
            if len(self._doc_cache) + len(missing) > DOC_CACHE_ENTRIES:
                self._doc_cache.clear()
                missing = list(ids)  # the cleared ones too: every document asked for is read
            marks = ",".join("?" * len(missing))
            for doc_id, key, version, title, source, is_live in self.conn.execute(
                    f"SELECT id, key, version, title, source, status = 'live' FROM documents WHERE id IN ({marks})",
                    missing):
                self._doc_cache[doc_id] = (key, version, title, source)
                if live is not None:
                    live[doc_id] = bool(is_live)
        return {i: self._doc_cache[i] for i in ids if i in self._doc_cache}


class RowFields:
    """Row -> chunk fields of one vectors file (one epoch), rows [0, built) so far.

    Filled in row order by `add` from `Store.row_fields` slices, each read in a snapshot
    of the same epoch; rows are only ever appended to a file, and a row never changes
    chunk while its file is current, so slices read at different times agree."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.built = 0
        self.records = bytearray()  # ROW_FIELDS records of rows [0, built)
        self.headings: list[str | None] = [None]  # each distinct heading once; 0 is none
        self._heading_ids: dict[str | None, int] = {None: 0}

    def covers(self, rows: Sequence[int]) -> bool:
        return not rows or (min(rows) >= 0 and max(rows) < self.built)

    def add(self, stop: int, found: list[tuple]) -> None:
        """Rows [built, stop): `found` is `Store.row_fields(built, stop)` (rows no chunk
        holds are absent from it and stay chunk 0)."""
        if stop <= self.built:
            return
        ids = self._heading_ids
        for heading in {f[5] for f in found} - ids.keys():
            ids[heading] = len(self.headings)
            self.headings.append(heading)
        import numpy as np
        record = np.dtype(ROW_FIELDS)
        rows = np.fromiter((f[0] for f in found), dtype=np.int64, count=len(found))
        if rows.size and (rows.min() < self.built or rows.max() >= stop):
            raise ValueError(f"rows {rows.min()}..{rows.max()} are not all in [{self.built}, {stop})")
        added = np.zeros(stop - self.built, dtype=record)
        added[rows - self.built] = np.array([(chunk_id, doc_id, position, -1 if page is None else page, ids[heading])
                                             for _, chunk_id, doc_id, position, page, heading in found],
                                            dtype=record)
        self.records += added.tobytes()
        self.built = stop
