"""The query server serves exactly the visible rows (issue 17): a delete or a promotion takes
effect at the very next query, cached answers included; a compaction's new vectors file is
followed; hits carry the document key and version; a stale hit is never served.

A real Store and real vectors files in tmp_path, the query server driven in-process over
its real ROUTER socket (tests/unit/test_roles.py). The follow poll is off (an hour) and no
indexer publishes events: what a query sees, it sees from its own read snapshot.
"""

from __future__ import annotations

import logging
import random
import time

import numpy as np
import pytest
import zmq

from roxi_mp import protocol
from roxi_mp.config import Config
from roxi_mp.errors import StoreError
from roxi_mp.query_view import RowView
from roxi_mp.roles.query_server import QState
from roxi_mp.store import Store
from roxi_mp.vectors import HEADER_BYTES, VectorWriter

from .test_query_embed import park, slow, until_reply  # noqa: F401 (fixture)
from .test_roles import (  # noqa: F401 (fixtures)
    DIM, MODEL_ID, QS, add_docs, cfg_factory, h, index_directly, qs_factory, zctx,
)

#: no follow poll: only a query's own snapshot can tell it about a change
NO_FOLLOW = {"query__follow_poll_seconds": 3600.0, "query__max_k": 20}
GOUT = "/corpus/gout.md"
GOUT_QUERY = "urate crystals in the big toe"
EXTRA = {f"extra-{i}.md": f"# Extra {i}\n\nFiller note {i} on topic{i} with words urate{i} and toe{i}.\n"
         for i in range(5)}


def chunk_ids(cfg: Config, key: str, version: int) -> list[int]:
    with Store(cfg.db_path) as store:
        return [r[0] for r in store.conn.execute(
            "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE d.key=? AND d.version=? "
            "ORDER BY c.position", (key, version))]


def put(cfg: Config, key: str, texts: list[str], *, title: str = "Gout, revised"):
    with Store(cfg.db_path) as store:
        return store.put_document(key=key, content_hash=h("\n".join(texts)), source=key, title=title,
                                  size=sum(map(len, texts)), chunks=[(i, t, h(t)) for i, t in enumerate(texts)])


def delete(cfg: Config, key: str) -> None:
    with Store(cfg.db_path) as store:
        store.delete_document(key)


def versions(reply: dict) -> set[tuple[str, int]]:
    assert reply["ok"] is True, reply
    return {(hit["key"], hit["version"]) for hit in reply["hits"]}


def live_rows(cfg: Config) -> int:
    """Rows a query may see: indexed chunks of live versions."""
    with Store(cfg.db_path) as store:
        return store.conn.execute("SELECT count(*) FROM chunks c JOIN documents d ON d.id = c.doc_id "
                                  "WHERE c.state = 'indexed' AND d.status = 'live'").fetchone()[0]


def compact(cfg: Config) -> int:
    """What a compaction does: the live rows into the next epoch's file, then ONE transaction
    renumbering them and moving the epoch; the old file is deleted after the switch."""
    with Store(cfg.db_path) as store:
        epoch = store.vectors_epoch() + 1
        old_path = cfg.vectors_file(epoch - 1)
        old = np.frombuffer(old_path.read_bytes()[HEADER_BYTES:], dtype="<f2").reshape(-1, DIM)
        live = store.conn.execute("SELECT id, row FROM chunks WHERE row IS NOT NULL AND state != 'dropped' "
                                  "ORDER BY row").fetchall()
        with VectorWriter(cfg.vectors_file(epoch), dim=DIM, model_id=MODEL_ID) as w:
            w.append(old[[row for _, row in live]])
            w.sync()
            w.publish(len(live))
        with store.transaction():
            store.conn.execute("UPDATE chunks SET row = NULL WHERE state = 'dropped'")
            store.conn.execute("UPDATE chunks SET row = -1 - row WHERE row IS NOT NULL")  # clear of UNIQUE
            store.conn.executemany("UPDATE chunks SET row=? WHERE id=?",
                                   [(new, cid) for new, (cid, _) in enumerate(live)])
            store._set_meta("committed_rows", str(len(live)))
            store._set_meta("vectors_epoch", str(epoch))
            store._set_meta("generation", str(store.generation() + 1))
            store._bump_visibility()
    old_path.unlink()
    return len(live)


@pytest.fixture
def q(qs_factory) -> QS:  # noqa: F811
    q = qs_factory(**NO_FOLLOW)
    index_directly(q.cfg, add_docs(q.cfg, EXTRA))
    return q


# --- delete ----------------------------------------------------------------------------------
def test_a_delete_takes_effect_at_the_very_next_query_cached_answers_included(q: QS) -> None:
    first = q.ask("query", text=GOUT_QUERY, k=4)
    assert first["hits"][0]["key"] == GOUT and first["hits"][0]["version"] == 1
    assert all(isinstance(hit["key"], str) and hit["version"] == 1 for hit in first["hits"])
    assert q.ask("query", text=GOUT_QUERY, k=4)["hits"] == first["hits"] and q.server.cache.hits == 1
    delete(q.cfg, GOUT)
    for repeat in range(3):  # the first computes it anew, the next two come from the cache
        after = q.ask("query", text=GOUT_QUERY, k=4)
        assert GOUT not in {key for key, _ in versions(after)} and len(after["hits"]) == 4
        assert [hit["rank"] for hit in after["hits"]] == [1, 2, 3, 4]
    assert q.server.cache.hits == 3  # the answer cached before the delete was never served
    everything = q.ask("query", text=GOUT_QUERY, k=20)  # k above the live rows: every live row
    assert len(everything["hits"]) == live_rows(q.cfg) == 7 and GOUT not in {k for k, _ in versions(everything)}
    vec = q.server.model.encode([GOUT_QUERY])[0].astype(np.float32)
    meta, buf = protocol.encode_array(vec)
    assert GOUT not in {k for k, _ in versions(q.ask("query", bytes(buf), k=3, **meta))}
    stats = q.ask("stats")
    with Store(q.cfg.db_path) as store:
        assert stats["visibility_seq"] == store.visibility().seq and stats["epoch"] == 0
    assert stats["hidden_rows"] == 1 and stats["stale_dropped"] == 0 and stats["rows"] == 8


def test_a_delete_on_a_sleeping_server_is_seen_when_it_wakes(q: QS) -> None:
    assert q.ask("query", text=GOUT_QUERY, k=2)["hits"][0]["key"] == GOUT
    q.ask("sleep")
    assert q.server.view.bits.size == 0 and q.server.searcher is None  # the hidden rows went too
    delete(q.cfg, GOUT)
    assert q.ask("stats")["state"] == "asleep"
    after = q.ask("query", text=GOUT_QUERY, k=2)
    assert GOUT not in {k for k, _ in versions(after)} and len(after["hits"]) == 2
    q.ask("sleep")
    reply = q.ask("wake")  # the bitmap is read whole again on wake
    assert reply["hidden_rows"] == 1 and q.server.searcher.info()["hidden_rows"] == 1


def test_a_parked_text_query_sees_a_delete_made_while_it_waited(slow) -> None:  # noqa: F811
    q, model, _ = slow(query__follow_poll_seconds=3600.0)
    assert q.ask("wake")["state"] == "awake"
    park(q, model, "t1", GOUT_QUERY, k=3)
    delete(q.cfg, GOUT)
    model.gate.set()
    reply = until_reply(q, "t1")
    assert reply["ok"] is True and len(reply["hits"]) == 2  # 3 documents, one deleted
    assert GOUT not in {hit["key"] for hit in reply["hits"]}


# --- replace ---------------------------------------------------------------------------------
def test_a_replacement_answers_only_v1_until_promoted_then_only_v2(q: QS) -> None:
    assert versions(q.ask("query", text=GOUT_QUERY, k=1)) == {(GOUT, 1)}
    v2 = ["Gout: urate crystals in the big toe, treated with allopurinol to a urate target.",
          "Febuxostat is the alternative when allopurinol is not tolerated in gout."]
    assert put(q.cfg, GOUT, v2).outcome == "replaced"
    ids = chunk_ids(q.cfg, GOUT, 2)
    index_directly(q.cfg, ids[:1])  # a row of v2, still pending: hidden
    pending = q.ask("query", text=v2[0], k=20)
    assert {v for k, v in versions(pending) if k == GOUT} == {1}
    assert len(pending["hits"]) == live_rows(q.cfg) == 8 and q.ask("stats")["hidden_rows"] == 1
    index_directly(q.cfg, ids[1:])  # the last chunk: the commit promotes v2, v1 dies
    promoted = q.ask("query", text=v2[0], k=20)
    gout = [hit for hit in promoted["hits"] if hit["key"] == GOUT]
    assert {hit["version"] for hit in gout} == {2} and len(gout) == 2
    assert promoted["hits"][0]["key"] == GOUT and promoted["hits"][0]["title"] == "Gout, revised"
    assert len(promoted["hits"]) == live_rows(q.cfg) == 9 and q.ask("stats")["hidden_rows"] == 1  # v1's


# --- compaction ------------------------------------------------------------------------------
def test_an_epoch_change_is_followed_to_the_new_vectors_file(q: QS) -> None:
    assert q.ask("query", text=GOUT_QUERY, k=1)["hits"][0]["key"] == GOUT
    delete(q.cfg, "/corpus/lupus.md")
    rows = compact(q.cfg)
    assert rows == 7 and not q.cfg.vectors_path.exists()
    reply = q.ask("query", text=GOUT_QUERY, k=20)
    assert reply["rows"] == 7 and len(reply["hits"]) == 7 and reply["hits"][0]["key"] == GOUT
    assert sorted(hit["row"] for hit in reply["hits"]) == list(range(7))
    assert q.server.searcher.vectors_path == q.cfg.vectors_file(1)
    lupus = q.ask("query", text="lupus nephritis antinuclear antibodies", k=1)
    assert lupus["hits"][0]["key"] != "/corpus/lupus.md"
    stats = q.ask("stats")
    assert (stats["epoch"], stats["known_rows"], stats["rows"], stats["hidden_rows"]) == (1, 7, 7, 0)
    for name, text in EXTRA.items():  # every row still holds its own chunk's vector
        top = q.ask("query", text=text.split("\n", 2)[2].strip(), k=1)["hits"][0]
        assert top["source"] == f"/corpus/{name}"


def test_known_rows_go_down_with_a_compaction_event(q: QS, zctx: zmq.Context) -> None:  # noqa: F811
    pub = protocol.configure(zctx.socket(zmq.PUB), hwm=100)
    pub.bind(q.cfg.endpoint("events"))
    try:
        def announce(rows: int, until) -> None:
            deadline = time.monotonic() + 30  # a guard against the slow joiner, not a measured time
            while not until():
                assert time.monotonic() < deadline, "the query server never heard the event"
                pub.send_multipart(protocol.generation_event(99, rows, 0))
                q.server.loop(time.monotonic())

        q.ask("wake")
        q.ask("sleep")
        assert q.server.known_rows == 8 and q.server.state is QState.ASLEEP
        delete(q.cfg, "/corpus/lupus.md")
        rows = compact(q.cfg)
        announce(rows, lambda: q.server.known_rows == rows)  # asleep: the event says it
        assert q.server.known.epoch == 0 and q.server.state is QState.ASLEEP
        assert q.ask("wake")["epoch"] == 1
        delete(q.cfg, "/corpus/osteoporosis.md")
        rows = compact(q.cfg)
        # Awake, an event with fewer rows sends the server to the store, which names the epoch.
        announce(rows, lambda: q.server.known.epoch == 2)
        assert q.server.known_rows == rows == 6
    finally:
        pub.close(0)


def test_a_snapshot_whose_vectors_file_is_gone_is_taken_again(q: QS, monkeypatch) -> None:
    store = Store(q.cfg.db_path)
    try:
        real = store.visibility()
        answers = iter([real._replace(epoch=5), real])  # vectors.5.faiss: deleted, never there
        monkeypatch.setattr(store, "visibility", lambda: next(answers))
        view = RowView(q.cfg)
        changes = []
        vis, out = view.read(store, lambda: view.mapped_rows, on_change=lambda: changes.append(1))
        assert vis == real and out == 8 and changes == [1] and view.epoch == 0
        monkeypatch.setattr(store, "visibility", lambda: real._replace(epoch=5))
        monkeypatch.setattr(view.watch, "mark", lambda store: -1)  # as if a compaction had committed
        with pytest.raises(StoreError, match="vectors.5.faiss"):
            view.read(store, lambda: None, on_change=lambda: None)
        assert view.searcher is None  # nothing half applied is kept
    finally:
        store.close()


# --- the last line of defence ----------------------------------------------------------------
def test_a_stale_hit_is_dropped_counted_and_logged(q: QS, caplog) -> None:
    assert q.ask("query", text=GOUT_QUERY, k=3)["hits"][0]["key"] == GOUT
    delete(q.cfg, GOUT)
    assert GOUT not in {k for k, _ in versions(q.ask("query", text=GOUT_QUERY, k=3))}
    q.server.view.bits[:] = 0  # a bug, on purpose: the deleted row is no longer hidden
    q.server.searcher.set_hidden(None)
    with caplog.at_level(logging.WARNING, logger="roxi.query"):
        reply = q.ask("query", text=GOUT_QUERY, k=4)  # not cached: the search finds the dead row
    assert GOUT not in {k for k, _ in versions(reply)}
    assert [hit["rank"] for hit in reply["hits"]] == [1, 2, 3]  # ranks stay consecutive
    assert q.ask("stats")["stale_dropped"] == 1
    assert any("not live" in r.getMessage() for r in caplog.records)


# --- the bitmap kept up to date equals one read afresh -----------------------------------------
def test_hidden_rows_kept_up_to_date_equal_a_fresh_read(q: QS) -> None:
    """Random deletes, replacements (promoted or still pending) and new documents: after each,
    the server's bitmap, updated from what changed, equals a fresh view's, and the rows it
    hides are exactly those of dropped chunks and of versions not live."""
    rng = random.Random(7)
    keys = [f"/corpus/{name}" for name in [*EXTRA, "gout.md", "lupus.md", "osteoporosis.md"]]
    q.ask("wake")
    for step in range(25):
        op, key = rng.choice(["delete", "replace", "pending", "add"]), rng.choice(keys)
        texts = [f"step {step} part {i} of {key}" for i in range(rng.randint(1, 3))]
        if op == "add" or key not in _live_keys(q.cfg):
            key = f"/new/{step}.md"
            keys.append(key)
            put(q.cfg, key, texts, title=key)
            index_directly(q.cfg, chunk_ids(q.cfg, key, 1))
        elif op == "delete":
            delete(q.cfg, key)
        else:
            version = put(q.cfg, key, texts).version
            ids = chunk_ids(q.cfg, key, version)
            if op == "replace" or len(ids) > 1:
                index_directly(q.cfg, ids if op == "replace" else ids[:-1])
        q.ask("query", text=texts[0], k=5)
        fresh = RowView(q.cfg)
        with Store(q.cfg.db_path) as store, store.snapshot():
            fresh.sync(store, store.visibility())
            truth = {r[0] for r in store.conn.execute(
                "SELECT c.row FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE c.row IS NOT NULL "
                "AND (c.state = 'dropped' OR d.status != 'live')")}
        assert np.array_equal(q.server.view.bits, fresh.bits), step
        hidden = np.flatnonzero(np.unpackbits(q.server.view.bits, bitorder="little"))
        assert set(hidden.tolist()) == truth, step


def _live_keys(cfg: Config) -> set[str]:
    with Store(cfg.db_path) as store:
        return {r[0] for r in store.conn.execute("SELECT key FROM documents WHERE status='live'")}
