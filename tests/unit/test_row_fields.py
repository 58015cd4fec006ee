"""The query server's row fields (issue 21): hits looked up from RowFields equal SQLite's,
follow a compaction's renumbering, never take in rows not committed, and a query takes no
snapshot while nothing was committed.

A real Store and vectors files in tmp_path; the query server driven in-process over its
real ROUTER socket (tests/unit/test_roles.py), as in test_query_visibility.py.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from roxi_mp import protocol
from roxi_mp.store import Store
from roxi_mp.query_view import CommitWatch
from roxi_mp.store_hits import RowFields
from roxi_mp.vectors import VectorWriter

from .test_query_visibility import EXTRA, GOUT, GOUT_QUERY, NO_FOLLOW, compact, delete
from .test_roles import (  # noqa: F401 (fixtures)
    DIM, MODEL_ID, QS, add_docs, cfg_factory, index_directly, qs_factory, zctx,
)


@pytest.fixture
def q(qs_factory) -> QS:  # noqa: F811
    q = qs_factory(**NO_FOLLOW)
    index_directly(q.cfg, add_docs(q.cfg, EXTRA))
    with Store(q.cfg.db_path) as store:  # where some chunks came from, as extraction records it
        store.conn.execute("UPDATE chunks SET page = 3, heading = 'Methods > Dosing' WHERE id % 2 = 0")
        store.conn.execute("UPDATE chunks SET heading = 'Background' WHERE id % 3 = 0")
    return q


def fields_of(store: Store, epoch: int, rows: int, step: int) -> RowFields:
    fields = RowFields(epoch)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        fields.add(stop, store.row_fields(start, stop))
    return fields


def built(q: QS) -> RowFields:
    """The server's row fields, once it has read them all (in its idle loop steps)."""
    q.ask("wake")
    for _ in range(100):
        if not q.server.view.fields_pending():
            break
        q.server.loop(0.0)
    fields = q.server.view.fields
    assert fields is not None and fields.built == q.server.view.rows > 0
    return fields


def agree_with_sqlite(q: QS, reply: dict) -> None:
    """Each hit's row is its chunk's row in the store now, and its fields are the chunk's."""
    assert reply["ok"] is True, reply
    with Store(q.cfg.db_path) as store:
        for hit in reply["hits"]:
            row = store.conn.execute(
                "SELECT c.row, c.doc_id, c.position, c.page, c.heading, d.key, d.version, d.status FROM chunks c "
                "JOIN documents d ON d.id = c.doc_id WHERE c.id = ?", (hit["chunk_id"],)).fetchone()
            assert row == (hit["row"], hit["doc_id"], hit["position"], hit["page"], hit["heading"], hit["key"],
                           hit["version"], "live")


def test_field_hits_equal_the_chunks_tables(q: QS) -> None:
    with Store(q.cfg.db_path) as store:
        rows = store.committed_rows()
        fields = fields_of(store, 0, rows, step=3)
        assert fields.built == rows and len(fields.headings) == 3  # none, and two distinct ones
        everything = list(range(rows))
        for with_text in (True, False):
            assert store.field_hits(fields, everything, with_text=with_text, live={}) \
                == store.hits(everything, with_text=with_text)
        pages = {hit.page for hit in store.hits(everything).values()}
        assert pages == {None, 3}


def test_a_row_of_a_version_not_live_is_left_out_and_logged(q: QS, caplog) -> None:
    delete(q.cfg, GOUT)
    with Store(q.cfg.db_path) as store:
        rows = store.committed_rows()
        fields = fields_of(store, 0, rows, step=rows)
        with caplog.at_level(logging.WARNING, logger="roxi.query"):
            found = store.field_hits(fields, list(range(rows)), with_text=False, live={})
        assert GOUT not in {hit.key for hit in found.values()} and len(found) == rows - 1
        assert found == store.hits(list(range(rows)), with_text=False)
    assert any("not live" in r.getMessage() for r in caplog.records)


def test_a_row_no_chunk_holds_is_left_out(q: QS) -> None:
    with Store(q.cfg.db_path) as store:
        rows = store.committed_rows()
        fields = RowFields(0)
        fields.add(rows, [f for f in store.row_fields(0, rows) if f[0] != 2])  # row 2: no chunk
        assert set(store.field_hits(fields, [1, 2, 3], with_text=True, live={})) == {1, 3}
        with pytest.raises(ValueError, match="not all in"):
            RowFields(0).add(2, store.row_fields(0, 3))


def test_the_server_answers_from_its_row_fields_as_from_sqlite(q: QS) -> None:
    fields = built(q)
    vec = q.server.model.encode([GOUT_QUERY])[0].astype(np.float32)
    meta, buf = protocol.encode_array(vec)
    asks = [dict(text=GOUT_QUERY, k=5), dict(text=GOUT_QUERY, k=5, with_text=False),
            dict(text=GOUT_QUERY, k=5, mode="dense"), dict(k=6, mode="dense", **meta),
            dict(k=6, **meta), dict(k=6, fusion="rrf", **meta)]
    q.server.cache.invalidate()
    from_fields = [q.ask("query", *([bytes(buf)] if "dtype" in a else []), **a) for a in asks]
    q.server.view.fields = None  # from now on, from the chunks table
    q.server.cache.invalidate()
    from_sqlite = [q.ask("query", *([bytes(buf)] if "dtype" in a else []), **a) for a in asks]
    for one, other in zip(from_fields, from_sqlite):
        assert one["hits"] and one["hits"] == other["hits"] and one["coverage"] == other["coverage"]
        agree_with_sqlite(q, one)
    assert fields.built == q.server.view.rows


def test_a_compaction_renumbers_rows_and_the_fields_follow(q: QS) -> None:
    old = built(q)
    before = q.ask("query", text=GOUT_QUERY, k=8, mode="dense")
    agree_with_sqlite(q, before)
    delete(q.cfg, GOUT)
    compact(q.cfg)  # rows renumbered into the next epoch's file
    after = q.ask("query", text=GOUT_QUERY, k=8, mode="dense")
    agree_with_sqlite(q, after)
    assert GOUT not in {hit["key"] for hit in after["hits"]}
    assert {hit["row"] for hit in after["hits"]} != {hit["row"] for hit in before["hits"]}
    new = built(q)
    assert new is not old and new.epoch == 1
    agree_with_sqlite(q, q.ask("query", text=GOUT_QUERY, k=8, mode="dense"))


def test_fields_half_read_when_a_compaction_switches_files_are_dropped(q: QS) -> None:
    q.ask("wake")
    view = q.server.view
    view.fields = RowFields(view.epoch)  # as just mapped: nothing read yet
    with Store(q.cfg.db_path) as store:
        view.extend(store, 2)  # the first slice only
        assert view.fields is not None and view.fields.built == 2 and view.fields_pending()
        delete(q.cfg, GOUT)
        compact(q.cfg)
        view.extend(store, 2)  # the rows are not the same rows any more: not one more is read
    assert view.fields is None and not view.fields_pending()
    agree_with_sqlite(q, q.ask("query", text=GOUT_QUERY, k=8, mode="dense"))  # from SQLite, mapped afresh
    assert built(q).epoch == 1


def test_rows_appended_but_not_committed_never_enter_the_fields(q: QS) -> None:
    """An indexer killed between its fsync and its SQLite commit leaves rows past the
    committed ones in the vectors file: the fields stop at the committed rows."""
    committed = built(q).built
    with VectorWriter(q.cfg.vectors_path, dim=DIM, model_id=MODEL_ID) as w:
        w.append(np.ones((3, DIM), dtype=np.float32) / np.sqrt(DIM))
        w.sync()  # and then the kill: SQLite never hears of them
    with Store(q.cfg.db_path) as store:
        store.conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")  # some commit
    reply = q.ask("query", text=GOUT_QUERY, k=20, mode="dense")
    agree_with_sqlite(q, reply)
    assert len(reply["hits"]) == committed and built(q).built == committed


def test_a_query_takes_no_snapshot_while_nothing_is_committed(q: QS, monkeypatch) -> None:
    built(q)
    store = q.server.db()
    taken = []
    real = store.snapshot
    monkeypatch.setattr(store, "snapshot", lambda: taken.append(1) or real())
    first = q.ask("query", text=GOUT_QUERY, k=4)
    assert q.ask("query", text=GOUT_QUERY, k=4)["hits"] == first["hits"] and taken == []
    delete(q.cfg, GOUT)  # another connection commits: the next query reads the store again
    after = q.ask("query", text=GOUT_QUERY, k=4)
    assert taken == [1] and GOUT not in {hit["key"] for hit in after["hits"]}
    assert after["generation"] == first["generation"] and after["coverage"]["chunks"] < first["coverage"]["chunks"]
    q.ask("query", text=GOUT_QUERY, k=4)
    assert taken == [1]


# --- the commit watch --------------------------------------------------------------------------
def test_the_commit_watch_sees_every_commit_of_another_connection(q: QS) -> None:
    watch = CommitWatch()
    with Store(q.cfg.db_path) as mine, Store(q.cfg.db_path) as other:
        first = watch.mark(mine)
        assert isinstance(first, bytes) and watch.mark(mine) == first  # the -shm header: nothing committed
        marks = [first]
        for step in range(3):
            with other.transaction():
                other.conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
            if step == 1:  # the WAL checkpointed and restarted: new salts, frames from 0
                other.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                with other.transaction():
                    other.conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
            marks.append(watch.mark(mine))
            assert marks[-1] == watch.mark(mine)
        assert len(set(marks)) == len(marks)
        watch.close()


def test_the_commit_watch_falls_back_on_data_version(q: QS, monkeypatch) -> None:
    watch = CommitWatch()
    with Store(q.cfg.db_path) as mine, Store(q.cfg.db_path) as other:
        first = watch.mark(mine)
        monkeypatch.setattr("roxi_mp.query_view.WAL_INDEX_VERSION", b"\0\0\0\0")  # a format it does not know
        version = watch.mark(mine)
        assert isinstance(version, int) and version != first and watch.mark(mine) == version
        with other.transaction():
            other.conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
        assert watch.mark(mine) != version
        monkeypatch.undo()
        gone = q.cfg.data_dir / "gone-shm"
        gone.write_bytes(Path(f"{mine.path}-shm").read_bytes()[:4096])
        watch.fd = os.open(gone, os.O_RDONLY)
        gone.unlink()  # as if the last other connection had closed and deleted it
        assert isinstance(watch.mark(mine), int) and watch.fd == -1  # opened afresh next time
        assert isinstance(watch.mark(mine), bytes)
        watch.close()
