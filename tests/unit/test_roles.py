"""Unit tests of the indexer and query-server roles, driven in-process.

No subprocesses: each role class is instantiated with a real zmq.Context and a config from
`make_config`, `initialize()`d, driven through `loop(now)` with real sockets on ipc
endpoints under the test's temporary directory, and `shutdown()` in a finally block.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sqlite3
import time
from types import SimpleNamespace
from typing import Callable, Iterator

import numpy as np
import pytest
import zmq

from roxi_mp import protocol
from roxi_mp.config import Config
from roxi_mp.embedders import HashingEmbedder
from roxi_mp.roles import query_server
from roxi_mp.roles.indexer import Indexer
from roxi_mp.roles.query_server import QState, QueryServer
from roxi_mp.store import Store
from roxi_mp.vectors import HEADER_BYTES, VectorWriter, read_header
from tests.conftest import PATIENCE, FakeClock

DIM = 256
MODEL_ID = f"hashing-v1-{DIM}"
#: fast loop steps: poll_timeout() is heartbeat/2
FAST = {"supervisor__heartbeat_seconds": 0.1}

DOCS = {
    "gout.md": "# Gout\n\nGout is an inflammatory arthritis caused by monosodium urate crystals "
               "deposited in the joint, classically the big toe.\n",
    "lupus.md": "# Systemic lupus erythematosus\n\nLupus is a systemic autoimmune disease with "
                "antinuclear antibodies, rash, nephritis and cytopenias.\n",
    "osteoporosis.md": "# Osteoporosis\n\nGlucocorticoids cause bone loss; bisphosphonates reduce "
                       "fracture risk in osteoporosis.\n",
}


# --- fixtures and helpers ------------------------------------------------------------------
@pytest.fixture
def cfg_factory(make_config) -> Iterator[Callable[..., Config]]:
    made: list[Config] = []

    def make(**overrides) -> Config:
        cfg = make_config(**{**FAST, **overrides})
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        cfg.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        made.append(cfg)
        return cfg

    yield make
    for cfg in made:  # a fallback run_dir under /tmp is not removed with tmp_path
        if not str(cfg.run_dir).startswith(str(cfg.data_dir)):
            shutil.rmtree(cfg.run_dir, ignore_errors=True)


@pytest.fixture
def cfg(cfg_factory) -> Config:
    return cfg_factory()


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def add_docs(cfg: Config, docs: dict[str, str] = DOCS, *, model: bool = True) -> list[int]:
    """Documents with one chunk each (their body); returns the new chunk ids in order."""
    ids = []
    with Store(cfg.db_path) as store:
        if model:
            store.ensure_model(MODEL_ID, DIM)
        for name, text in docs.items():
            title, body = text.split("\n", 1)
            doc = store.add_document(content_hash=h(text), source=f"/corpus/{name}", title=title.lstrip("# "),
                                     size=len(text), chunks=[(0, body.strip(), h(body))])
            ids.append(store.conn.execute("SELECT id FROM chunks WHERE doc_id=?", (doc,)).fetchone()[0])
    return ids


def chunk_texts(cfg: Config, ids: list[int]) -> list[str]:
    with Store(cfg.db_path) as store:
        return [store.conn.execute("SELECT text FROM chunks WHERE id=?", (i,)).fetchone()[0] for i in ids]


def embed(texts: list[str]) -> np.ndarray:
    return HashingEmbedder(dim=DIM).encode(texts).astype(np.float16)


def index_directly(cfg: Config, ids: list[int]) -> None:
    """The indexer's commit protocol without an indexer: append, fsync, SQLite, publish."""
    vectors = embed(chunk_texts(cfg, ids))
    with Store(cfg.db_path) as store, VectorWriter(cfg.vectors_path, dim=DIM, model_id=MODEL_ID) as w:
        w.recover(store.committed_rows())
        first = w.append(vectors)
        w.sync()
        rows = first + len(ids)
        store.commit_rows(list(zip(ids, range(first, rows))), rows=rows)
        w.publish(rows)


def vectors_message(ids: list, matrix: np.ndarray, **header_overrides) -> list[bytes]:
    meta, buf = protocol.encode_array(matrix)
    header = {"v": protocol.VERSION, "type": "vectors", "chunk_ids": ids, "model_id": MODEL_ID,
              "sender": "test-embedder", **meta, **header_overrides}
    return [protocol.pack(header), bytes(buf)]


def drive(role, until: Callable[[], bool], *, timeout: float = PATIENCE, what: str = "condition") -> None:
    """Step `role` until `until()`: a generous deadline, since a passing test never waits it out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        role.loop(time.monotonic())
        if until():
            return
    raise AssertionError(f"timed out waiting for {what}")


def chunk_rows(cfg: Config) -> dict[int, int | None]:
    with Store(cfg.db_path) as store:
        return dict(store.conn.execute("SELECT id, row FROM chunks ORDER BY id").fetchall())


def file_rows(cfg: Config) -> np.ndarray:
    raw = cfg.vectors_path.read_bytes()[HEADER_BYTES:]
    return np.frombuffer(raw, dtype="<f2").reshape(-1, DIM)


# --- indexer --------------------------------------------------------------------------------
@pytest.fixture
def indexer_setup(cfg: Config, zctx: zmq.Context):
    ids = add_docs(cfg)
    indexer = Indexer(cfg, zctx)
    indexer.initialize()
    push = protocol.configure(zctx.socket(zmq.PUSH), hwm=100)
    push.connect(cfg.endpoint("vectors"))
    try:
        yield cfg, ids, indexer, push
    finally:
        push.close(0)
        indexer.shutdown()


def test_indexer_commits_received_vectors(indexer_setup) -> None:
    cfg, ids, indexer, push = indexer_setup
    assert read_header(cfg.vectors_path).rows == 0 and indexer.info()["rows"] == 0
    matrix = embed(chunk_texts(cfg, ids))
    sent = [ids[2], ids[0], ids[1]]
    push.send_multipart(vectors_message(sent, matrix[[2, 0, 1]]))
    drive(indexer, lambda: indexer.rows_committed == 3, what="3 committed rows")
    assert (indexer.commits, indexer.duplicates, indexer.rejected) == (1, 0, 0)
    with Store(cfg.db_path) as store:
        assert store.committed_rows() == 3 and store.generation() == 1
        assert store.stats().indexed == 3
    # Rows follow the order the chunks arrived in.
    assert chunk_rows(cfg) == {ids[2]: 0, ids[0]: 1, ids[1]: 2}
    header = read_header(cfg.vectors_path)
    assert (header.rows, header.dim, header.codes_bytes) == (3, DIM, 3 * 2 * DIM)
    assert cfg.vectors_path.stat().st_size == HEADER_BYTES + 3 * 2 * DIM
    np.testing.assert_array_equal(file_rows(cfg), matrix[[2, 0, 1]])
    info = indexer.info()
    commit_seconds = info.pop("metrics")["commit_seconds"]
    assert sum(commit_seconds["counts"]) == 1 and commit_seconds["sum"] > 0  # one commit, timed
    assert info == {"state": "running", "rows": 3, "generation": 1, "commits": 1,
                              "duplicates": 0, "rejected": 0, "commit_failures": 0, "last_error": None,
                              "copied": 0, "index": "exact", "ann_rows": 0,
                              "building": False, "builds": 0, "build_failures": 0, "last_build_seconds": None,
                              "compaction": {"running": False, "last": None, "reclaimable_bytes": 0,
                                             "refused": None, "count": 0, "error": None}}


def test_indexer_idle_suspends_only_when_no_chunk_is_on_its_way(indexer_setup) -> None:
    cfg, ids, indexer, push = indexer_setup
    assert cfg.supervisor.suspend
    indexer.last_activity = time.monotonic() - cfg.embedder.idle_seconds - 1
    indexer.loop(time.monotonic())
    assert indexer.state_name() == "asleep" and not indexer.suspend  # chunks pending: embedders will send
    with Store(cfg.db_path) as store:
        store.set_paused(True)
    indexer.loop(time.monotonic())
    assert indexer.suspend  # paused: nobody will send any until `roxi resume` (which resumes it)
    indexer.suspend = False
    with Store(cfg.db_path) as store:
        store.set_paused(False)
        store.claim("embedder-1:1:x", len(ids), now=time.time(), lease_seconds=60)
    indexer.loop(time.monotonic())
    assert not indexer.suspend  # leased: an embedder has them in hand
    push.send_multipart(vectors_message(ids, embed(chunk_texts(cfg, ids))))
    drive(indexer, lambda: indexer.rows_committed == len(ids), what="the rows committed")
    assert indexer.state_name() == "running" and not indexer.suspend
    indexer.last_activity = time.monotonic() - cfg.embedder.idle_seconds - 1
    indexer.loop(time.monotonic())
    assert indexer.state_name() == "asleep" and indexer.suspend  # nothing left: the process exits


def test_indexer_asked_to_sleep_sleeps_once_nothing_is_in_hand(indexer_setup) -> None:
    """`roxi sleep` is deep sleep now: the indexer does not wait out `embedder.idle_seconds`,
    but the rows it holds are committed first; `wake` makes it run again."""
    cfg, ids, indexer, push = indexer_setup
    assert cfg.embedder.idle_seconds > 5
    push.send_multipart(vectors_message(ids[:2], embed(chunk_texts(cfg, ids[:2]))))
    drive(indexer, lambda: indexer.pending, what="rows received")
    indexer.command({"op": "sleep"}, time.monotonic())
    seen = []  # (state, rows in hand) after each step
    drive(indexer, lambda: seen.append((indexer.state_name(), bool(indexer.pending))) or seen[-1][0] == "asleep",
          what="asleep")
    assert ("asleep", True) not in seen  # rows in hand: not asleep before they are committed
    assert indexer.rows_committed == 2 and not indexer.pending
    assert not indexer.suspend  # chunks still pending: embedders will send them
    indexer.command({"op": "wake"}, time.monotonic())
    assert indexer.state_name() == "running"
    indexer.loop(time.monotonic())
    assert indexer.state_name() == "running"  # awake again: the idle timer, not the old request
    indexer.command({"op": "sleep"}, time.monotonic())
    indexer.loop(time.monotonic())
    assert indexer.state_name() == "asleep"


@pytest.mark.parametrize("fault", ["disk full", "sqlite full"])
def test_indexer_keeps_rows_through_a_failed_commit_and_retries(indexer_setup, monkeypatch, fault) -> None:
    cfg, ids, indexer, push = indexer_setup
    matrix = embed(chunk_texts(cfg, ids))
    size = cfg.vectors_path.stat().st_size
    failures = {"left": 2}
    if fault == "disk full":
        real = os.pwrite

        def pwrite(fd: int, data, offset: int) -> int:
            if failures["left"] and offset >= HEADER_BYTES:  # rows, not the header patch
                failures["left"] -= 1
                real(fd, bytes(data)[:7], offset)  # half a row reached the disk
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd, data, offset)

        monkeypatch.setattr("roxi_mp.vectors.os.pwrite", pwrite)
    else:
        real_commit_rows = Store.commit_rows

        def commit_rows(self, *args, **kwargs):
            if failures["left"]:
                failures["left"] -= 1
                raise sqlite3.OperationalError("database or disk is full")
            return real_commit_rows(self, *args, **kwargs)

        monkeypatch.setattr(Store, "commit_rows", commit_rows)
    push.send_multipart(vectors_message(ids[:3], matrix[:3]))
    drive(indexer, lambda: indexer.commit_failures == 1, what="a failed commit")
    assert ("No space left" if fault == "disk full" else "disk is full") in indexer.info()["last_error"]
    assert len(indexer.pending) == 3 and indexer.rows_committed == 0
    assert cfg.vectors_path.stat().st_size == size  # what the failed commit appended is taken back
    assert read_header(cfg.vectors_path).rows == 0
    with Store(cfg.db_path) as store:
        assert store.committed_rows() == 0 and store.stats().indexed == 0
    # Retried after a backoff (0.5 s, then 1 s), without receiving anything new meanwhile.
    drive(indexer, lambda: indexer.rows_committed == 3, what="the retried commit")
    assert indexer.info()["commit_failures"] == 0 and indexer.info()["last_error"] is None
    assert chunk_rows(cfg) == {ids[0]: 0, ids[1]: 1, ids[2]: 2, **{i: None for i in ids[3:]}}
    np.testing.assert_array_equal(file_rows(cfg), matrix[:3])


def test_indexer_drops_a_duplicate_delivery(indexer_setup) -> None:
    cfg, ids, indexer, push = indexer_setup
    matrix = embed(chunk_texts(cfg, ids))
    push.send_multipart(vectors_message(ids[:2], matrix[:2]))
    drive(indexer, lambda: indexer.rows_committed == 2, what="first commit")
    before = cfg.vectors_path.read_bytes()
    # The lease expired and another embedder sent the same chunks again, plus a new one.
    push.send_multipart(vectors_message(ids[:2], matrix[:2]))
    drive(indexer, lambda: indexer.duplicates == 2, what="duplicates")
    assert indexer.rows_committed == 2 and indexer.commits == 1
    assert read_header(cfg.vectors_path).rows == 2 and cfg.vectors_path.read_bytes() == before
    push.send_multipart(vectors_message([ids[1], ids[2]], matrix[1:3]))
    drive(indexer, lambda: indexer.rows_committed == 3, what="mixed delivery")
    assert indexer.duplicates == 3 and indexer.rows_committed == 3
    assert chunk_rows(cfg) == {ids[0]: 0, ids[1]: 1, ids[2]: 2}
    assert cfg.vectors_path.read_bytes()[HEADER_BYTES:HEADER_BYTES + 4 * DIM] == before[HEADER_BYTES:]
    # A delivery that is only duplicates changes nothing at all.
    generation = indexer.generation
    push.send_multipart(vectors_message(ids, matrix))
    drive(indexer, lambda: indexer.duplicates == 6, what="all-duplicate delivery")
    assert indexer.generation == generation and indexer.commits == 2
    assert read_header(cfg.vectors_path).rows == 3
    assert cfg.vectors_path.stat().st_size == HEADER_BYTES + 3 * 2 * DIM


def _bad_messages(matrix: np.ndarray, ids: list[int]) -> dict[str, list[bytes]]:
    nan = matrix[:1].copy()
    nan[0, 0] = np.nan
    return {
        "wrong model": vectors_message(ids[:1], matrix[:1], model_id="hashing-v1-512"),
        "no model": vectors_message(ids[:1], matrix[:1], model_id=None),
        "wrong dim": vectors_message(ids[:1], np.ones((1, 128), np.float16)),
        "ids shorter than rows": vectors_message(ids[:1], matrix[:2]),
        "ids longer than rows": vectors_message(ids[:3], matrix[:2]),
        "ids not a list": vectors_message(ids[0], matrix[:1]),
        "bool id": vectors_message([True], matrix[:1]),
        "string id": vectors_message(["1"], matrix[:1]),
        "bad version": vectors_message(ids[:1], matrix[:1], v=99),
        "nan": vectors_message(ids[:1], nan),
        "one frame": vectors_message(ids[:1], matrix[:1])[:1],
        "three frames": vectors_message(ids[:1], matrix[:1]) + [b"extra"],
        "garbage header": [b"\xc1\xc1", bytes(matrix[:1].tobytes())],
        "short buffer": [vectors_message(ids[:1], matrix[:1])[0], b"\x00" * 10],
    }


def test_indexer_rejects_bad_messages_without_crashing(indexer_setup) -> None:
    cfg, ids, indexer, push = indexer_setup
    matrix = embed(chunk_texts(cfg, ids))
    bad = _bad_messages(matrix, ids)
    for frames in bad.values():
        push.send_multipart(frames)
    drive(indexer, lambda: indexer.rejected == len(bad), what=f"{len(bad)} rejections")
    assert indexer.rows_committed == 0 and indexer.pending == {}
    assert chunk_rows(cfg) == {i: None for i in ids}
    assert read_header(cfg.vectors_path).rows == 0
    # Still working: a good message afterwards is committed.
    push.send_multipart(vectors_message(ids, matrix))
    drive(indexer, lambda: indexer.rows_committed == 3, what="good commit after rejects")
    assert indexer.rejected == len(bad) and indexer.info()["rejected"] == len(bad)
    assert sorted(chunk_rows(cfg).values()) == [0, 1, 2]


def test_indexer_rejects_an_unhashable_dtype(indexer_setup) -> None:
    cfg, ids, indexer, push = indexer_setup
    matrix = embed(chunk_texts(cfg, ids))
    push.send_multipart(vectors_message(ids[:1], matrix[:1], dtype=["float16"]))
    drive(indexer, lambda: indexer.rejected == 1, what="rejection")


def test_indexer_rejects_chunk_ids_beyond_int64(indexer_setup) -> None:
    cfg, ids, indexer, push = indexer_setup
    matrix = embed(chunk_texts(cfg, ids))
    push.send_multipart(vectors_message([2**64 - 1], matrix[:1]))
    try:
        drive(indexer, lambda: indexer.rejected == 1 or indexer.duplicates == 1, what="refusal")
    finally:
        indexer.pending.clear()  # so the fixture's shutdown() does not hit the same crash again
    assert indexer.rejected == 1


def test_indexer_shutdown_flushes_pending_rows(cfg: Config, zctx: zmq.Context) -> None:
    cfg.indexer.commit_max_ms = 60_000  # no commit by time: only shutdown can flush
    ids = add_docs(cfg)
    indexer = Indexer(cfg, zctx)
    indexer.initialize()
    push = protocol.configure(zctx.socket(zmq.PUSH), hwm=100)
    push.connect(cfg.endpoint("vectors"))
    try:
        push.send_multipart(vectors_message(ids, embed(chunk_texts(cfg, ids))))
        drive(indexer, lambda: len(indexer.pending) == 3, what="pending rows")
        assert indexer.rows_committed == 0
    finally:
        push.close(0)
        indexer.shutdown()
    with Store(cfg.db_path) as store:
        assert store.committed_rows() == 3
    assert read_header(cfg.vectors_path).rows == 3


def test_new_indexer_truncates_rows_appended_but_not_committed(cfg: Config) -> None:
    ids = add_docs(cfg)
    matrix = embed(chunk_texts(cfg, ids))
    ctx1 = zmq.Context()
    first = Indexer(cfg, ctx1)
    first.initialize()
    push = protocol.configure(ctx1.socket(zmq.PUSH), hwm=100)
    push.connect(cfg.endpoint("vectors"))
    try:
        push.send_multipart(vectors_message(ids[:1], matrix[:1]))
        drive(first, lambda: first.rows_committed == 1, what="first commit")
    finally:
        push.close(0)
        first.shutdown()
        ctx1.term()  # the old sockets are gone before the new indexer binds the same paths
    # The crash: rows appended and fsynced, then the process died before SQLite committed.
    with VectorWriter(cfg.vectors_path, dim=DIM, model_id=MODEL_ID) as w:
        assert w.append(matrix[1:]) == 1
        w.sync()
    assert cfg.vectors_path.stat().st_size == HEADER_BYTES + 3 * 2 * DIM
    with Store(cfg.db_path) as store:
        assert store.committed_rows() == 1

    ctx2 = zmq.Context()
    second = Indexer(cfg, ctx2)
    try:
        second.initialize()
        assert second.writer.rows == 1
        assert cfg.vectors_path.stat().st_size == HEADER_BYTES + 1 * 2 * DIM
        assert read_header(cfg.vectors_path).rows == 1
        np.testing.assert_array_equal(file_rows(cfg), matrix[:1])
        # The chunks were never marked, so they come again and land right after row 0.
        push = protocol.configure(ctx2.socket(zmq.PUSH), hwm=100)
        push.connect(cfg.endpoint("vectors"))
        push.send_multipart(vectors_message(ids[1:], matrix[1:]))
        drive(second, lambda: second.rows_committed == 2, what="re-delivered commit")
        push.close(0)
    finally:
        second.shutdown()
        ctx2.term()
    assert chunk_rows(cfg) == {ids[0]: 0, ids[1]: 1, ids[2]: 2}
    np.testing.assert_array_equal(file_rows(cfg), matrix)


def test_indexer_refuses_a_store_built_with_another_model(cfg: Config, zctx: zmq.Context) -> None:
    from roxi_mp.errors import ModelMismatch
    with Store(cfg.db_path) as store:
        store.ensure_model("some-other-model", DIM)
    indexer = Indexer(cfg, zctx)
    try:
        with pytest.raises(ModelMismatch) as info:
            indexer.initialize()
        assert "some-other-model" in str(info.value) and MODEL_ID in str(info.value)
    finally:
        indexer.shutdown()
    assert not cfg.vectors_path.exists()


# --- query server ----------------------------------------------------------------------------
class QS:
    """A query server and a DEALER client talking to it over its real ROUTER socket."""

    def __init__(self, cfg: Config, ctx: zmq.Context) -> None:
        self.cfg = cfg
        self.server = QueryServer(cfg, ctx)
        self.server.initialize()
        self.dealer = protocol.configure(ctx.socket(zmq.DEALER), hwm=100)
        self.dealer.connect(cfg.endpoint("query"))
        self._ids = iter(range(1, 1_000_000))

    def exchange(self, frames: list[bytes], *, timeout: float = PATIENCE) -> list[bytes]:
        self.dealer.send_multipart(frames)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.server.loop(time.monotonic())
            if self.dealer.poll(0, zmq.POLLIN):
                return self.dealer.recv_multipart()
        raise AssertionError("no reply from the query server")

    def ask_raw(self, body: bytes, *extra: bytes) -> dict:
        reply = self.exchange([b"", body, *extra])
        assert reply[0] == b"" and len(reply) == 2
        return protocol.unpack_map(reply[1], max_bytes=1 << 24)

    def ask(self, op: str | None, *extra: bytes, **fields) -> dict:
        request_id = f"req-{next(self._ids)}"
        msg = protocol.request(op, request_id, **fields)
        if op is None:
            del msg["op"]
        reply = self.ask_raw(protocol.pack(msg), *extra)
        assert reply["id"] == request_id and reply["v"] == protocol.VERSION
        return reply

    def close(self) -> None:
        self.dealer.close(0)
        self.server.shutdown()


@pytest.fixture
def qs_factory(cfg_factory, zctx: zmq.Context):
    made: list[QS] = []

    def make(*, index: bool = True, **overrides) -> QS:
        cfg = cfg_factory(**overrides)
        ids = add_docs(cfg)
        if index:
            index_directly(cfg, ids)
        q = QS(cfg, zctx)
        made.append(q)
        return q

    yield make
    for q in made:
        q.close()


@pytest.fixture
def qs(qs_factory) -> QS:
    return qs_factory(query__max_k=20, query__max_query_chars=100)


def assert_good_query(q: QS) -> None:
    reply = q.ask("query", text="urate crystals in the big toe", k=2)
    assert reply["ok"] is True
    assert reply["hits"][0]["title"] == "Gout"


def test_text_query_returns_ranked_hits_with_title_and_text(qs: QS) -> None:
    assert qs.server.state is QState.ASLEEP and qs.server.searcher is None
    reply = qs.ask("query", text="urate crystals in the big toe", k=3)
    assert reply["ok"] is True and reply["rows"] == 3
    hits = reply["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[1]
    top = hits[0]
    assert top["title"] == "Gout" and "monosodium urate crystals" in top["text"]
    assert top["source"] == "/corpus/gout.md" and top["position"] == 0
    assert top["row"] == 0 and top["chunk_id"] == 1 and top["doc_id"] == 1
    assert {h["title"] for h in hits} == {"Gout", "Systemic lupus erythematosus", "Osteoporosis"}
    assert qs.server.state is QState.AWAKE and qs.server.searcher is not None
    # k limits the hits; with_text=False leaves the text out; default k applies.
    one = qs.ask("query", text="lupus nephritis antinuclear antibodies", k=1, with_text=False)
    assert len(one["hits"]) == 1 and one["hits"][0]["title"] == "Systemic lupus erythematosus"
    assert "text" not in one["hits"][0]
    assert len(qs.ask("query", text="osteoporosis")["hits"]) == 3


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_vector_query(qs: QS, dtype) -> None:
    vec = HashingEmbedder(dim=DIM).encode(["bisphosphonates fracture risk"])[0].astype(dtype)
    meta, buf = protocol.encode_array(vec)  # 1-D shape: one query row
    reply = qs.ask("query", bytes(buf), k=2, **meta)
    assert reply["ok"] is True and len(reply["hits"]) == 2
    assert reply["hits"][0]["title"] == "Osteoporosis"


def _vector(rows: int = 1, dim: int = DIM, *, bad: float | None = None) -> tuple[dict, bytes]:
    m = np.full((rows, dim), 0.01, dtype=np.float32)
    if bad is not None:
        m[0, 0] = bad
    meta, buf = protocol.encode_array(m)
    return meta, bytes(buf)


BAD_REQUESTS = {
    # name: (op, extra frames, fields, expected code)
    "k zero": ("query", [], {"text": "gout", "k": 0}, "bad_request"),
    "k above max_k": ("query", [], {"text": "gout", "k": 21}, "bad_request"),
    "k negative": ("query", [], {"text": "gout", "k": -1}, "bad_request"),
    "k as string": ("query", [], {"text": "gout", "k": "3"}, "bad_request"),
    "k as bool": ("query", [], {"text": "gout", "k": True}, "bad_request"),
    "k as float": ("query", [], {"text": "gout", "k": 3.0}, "bad_request"),
    "empty text": ("query", [], {"text": ""}, "bad_request"),
    "blank text": ("query", [], {"text": " \n\t "}, "bad_request"),
    "text not a string": ("query", [], {"text": 42}, "bad_request"),
    "text too long": ("query", [], {"text": "g" * 101}, "too_large"),
    "no text nor vector": ("query", [], {"k": 3}, "bad_request"),
    "unknown op": ("delete_everything", [], {}, "unknown_op"),
    "missing op": (None, [], {}, "unknown_op"),
    "op not a string": (7, [], {}, "unknown_op"),
    "bad version": ("query", [], {"text": "gout", "v": 2}, "bad_version"),
    "vector wrong dim": ("query", [_vector(dim=128)[1]], {**_vector(dim=128)[0]}, "bad_request"),
    "vector with nan": ("query", [_vector(bad=float("nan"))[1]], {**_vector()[0]}, "bad_request"),
    "vector with inf": ("query", [_vector(bad=float("inf"))[1]], {**_vector()[0]}, "bad_request"),
    "two vector rows": ("query", [_vector(rows=2)[1]], {**_vector(rows=2)[0]}, "too_large"),
    "vector without frame": ("query", [], {**_vector()[0]}, "bad_request"),
    "vector short frame": ("query", [_vector()[1][:-2]], {**_vector()[0]}, "bad_request"),
    "two vector frames": ("query", [_vector()[1], _vector()[1]], {**_vector()[0]}, "bad_request"),
    "vector bad dtype": ("query", [_vector()[1]], {**_vector()[0], "dtype": "float64"}, "bad_request"),
    "vector bool shape": ("query", [_vector()[1]], {"dtype": "float32", "shape": [True, DIM]}, "bad_request"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_gets_an_error_reply_and_the_server_keeps_serving(qs: QS, name: str) -> None:
    op, extra, fields, code = BAD_REQUESTS[name]
    request_id = "bad-1"
    msg = {"v": protocol.VERSION, "id": request_id, "op": op, **fields}
    if op is None:
        del msg["op"]
    reply = qs.ask_raw(protocol.pack(msg), *extra)
    assert reply["ok"] is False and reply["code"] == code, reply
    assert reply["id"] == request_id and isinstance(reply["message"], str) and reply["message"]
    assert qs.server.errors == 1
    assert_good_query(qs)
    assert qs.server.served == 1


@pytest.mark.parametrize("body, code", [
    (b"\xc1not msgpack", "bad_request"),
    (protocol.pack([1, 2, 3]), "bad_request"),
    (protocol.pack({1: "int key"}), "bad_request"),
])
def test_undecodable_request_gets_an_error_reply_without_id(qs: QS, body: bytes, code: str) -> None:
    reply = qs.ask_raw(body)
    assert reply == {"v": protocol.VERSION, "id": None, "ok": False, "code": code, "message": reply["message"]}
    assert_good_query(qs)


def test_dealer_without_delimiter_gets_an_answer(qs: QS) -> None:
    reply = qs.exchange([protocol.pack(protocol.request("ping", "p1"))])
    assert len(reply) == 1  # no delimiter came, none goes back
    assert protocol.unpack_map(reply[0], max_bytes=4096) == {"v": 1, "id": "p1", "ok": True, "pong": True}


def test_request_without_body_is_dropped_and_counted(qs: QS) -> None:
    qs.server.handle([b"client-id", b""], time.monotonic())
    qs.server.handle([b"client-id"], time.monotonic())
    assert qs.server.dropped == 2 and qs.server.errors == 0


def test_the_first_query_after_a_quiet_spell_asks_for_a_heartbeat_at_once(qs: QS) -> None:
    """So the supervisor tells the embedders to leave a core free now (issue 21)."""
    qs.server.last_query -= qs.cfg.embedder.yield_seconds
    assert_good_query(qs)
    assert qs.server.beat_soon is True
    qs.server.beat_soon = False  # the Runner's next step sends it
    assert_good_query(qs)
    assert qs.server.beat_soon is False  # queries flowing: the regular beats carry them
    qs.server.last_query -= qs.cfg.embedder.yield_seconds
    assert_good_query(qs)
    assert qs.server.beat_soon is True


def test_vector_query_with_zero_rows_is_a_bad_request(qs: QS) -> None:
    assert_good_query(qs)  # awake, with an index, so the search is reached
    reply = qs.ask("query", b"", dtype="float32", shape=[0, DIM])
    assert reply["ok"] is False and reply["code"] == "bad_request", reply


def test_vector_query_with_unhashable_dtype_is_a_bad_request(qs: QS) -> None:
    meta, buf = _vector()
    reply = qs.ask("query", buf, **{**meta, "dtype": ["float32"]})
    assert reply["ok"] is False and reply["code"] == "bad_request", reply


def test_query_on_a_store_of_another_model_is_model_mismatch(cfg_factory, zctx: zmq.Context) -> None:
    cfg = cfg_factory()
    add_docs(cfg, model=False)
    with Store(cfg.db_path) as store:
        store.ensure_model("other-model", 384)
    q = QS(cfg, zctx)
    try:
        reply = q.ask("query", text="gout")
        assert reply["ok"] is False and reply["code"] == "model_mismatch"
        assert "other-model" in reply["message"]
    finally:
        q.close()


def test_query_with_nothing_indexed_finds_words_but_no_vectors(qs_factory) -> None:
    q = qs_factory(index=False)
    reply = q.ask("query", text="gout", mode="dense")
    assert reply["ok"] is True and reply["hits"] == [] and reply["rows"] == 0
    assert reply["coverage"]["indexed"] == 0 and reply["coverage"]["pending"] > 0
    reply = q.ask("query", text="gout")  # hybrid: the lexical leg finds stored chunks
    assert reply["ok"] is True and reply["hits"] and reply["rows"] == 0
    assert all(h["embedded"] is False and h["row"] is None and h["dense_rank"] is None
               and h["lexical_rank"] >= 1 for h in reply["hits"])


def test_stats_and_ping_do_not_wake_a_sleeping_server(qs: QS) -> None:
    for _ in range(2):
        stats = qs.ask("stats")
        assert stats["ok"] is True and stats["state"] == "asleep" and stats["rows"] == 0
        assert qs.ask("ping")["pong"] is True
    assert qs.server.state is QState.ASLEEP and qs.server.searcher is None
    assert qs.server.served == 0


def test_sleep_op_drops_the_index_and_a_query_wakes_it(qs: QS, monkeypatch: pytest.MonkeyPatch) -> None:
    # A generous reply deadline: sleep and wake run gc.collect() and malloc_trim(0) over the
    # whole process (here pytest's, large after hundreds of tests), close and reopen the
    # store (a WAL checkpoint, fsync); on a loaded machine one such step can outlast
    # QS.exchange's 5 s, which then gives up although the reply is on its way.
    monkeypatch.setattr(qs, "exchange", lambda frames, timeout=60.0: QS.exchange(qs, frames, timeout=timeout))
    assert_good_query(qs)
    assert qs.server.searcher is not None and qs.ask("stats")["state"] == "awake"
    reply = qs.ask("sleep")
    assert reply["ok"] is True and reply["state"] == "asleep" and reply["rows"] == 0
    assert qs.server.searcher is None and qs.server.state is QState.ASLEEP
    assert qs.server.state_name() == qs.server.info()["state"] == "asleep"  # what heartbeats say
    assert_good_query(qs)
    assert qs.server.state is QState.AWAKE and qs.server.searcher.ntotal == 3
    assert qs.server.state_name() == qs.server.info()["state"] == "running"


def test_wake_op_maps_the_committed_rows(qs: QS) -> None:
    reply = qs.ask("wake")
    assert reply["state"] == "awake" and reply["rows"] == 3 and reply["known_rows"] == 3
    assert qs.server.searcher is not None and qs.server.searcher.ntotal == 3


def test_idle_server_goes_to_sleep(qs_factory) -> None:
    q = qs_factory(query__idle_seconds=0.2)
    assert_good_query(q)  # maps the index (the server may already be idle again on a slow box)
    drive(q.server, lambda: q.server.state is QState.ASLEEP, what="idle sleep")
    assert q.server.searcher is None


def test_awake_server_follows_new_commits(qs_factory) -> None:
    q = qs_factory(query__follow_poll_seconds=0.1)
    assert q.ask("query", text="methotrexate monitoring")["rows"] == 3
    new = add_docs(q.cfg, {"mtx.md": "# Methotrexate\n\nMethotrexate needs blood count and liver "
                                     "monitoring.\n"})
    index_directly(q.cfg, new)
    drive(q.server, lambda: q.server.known_rows == 4, what="follow poll")
    reply = q.ask("query", text="methotrexate monitoring", k=1)
    assert reply["rows"] == 4 and reply["hits"][0]["title"] == "Methotrexate"


def test_query_server_sees_rows_committed_by_the_indexer(cfg: Config, zctx: zmq.Context) -> None:
    ids = add_docs(cfg)
    indexer = Indexer(cfg, zctx)
    indexer.initialize()
    push = protocol.configure(zctx.socket(zmq.PUSH), hwm=100)
    push.connect(cfg.endpoint("vectors"))
    q = None
    try:
        q = QS(cfg, zctx)
        push.send_multipart(vectors_message(ids, embed(chunk_texts(cfg, ids))))
        drive(indexer, lambda: indexer.rows_committed == 3, what="indexer commit")
        reply = q.ask("query", text="antinuclear antibodies rash", k=1)
        assert reply["rows"] == 3 and reply["hits"][0]["title"] == "Systemic lupus erythematosus"
    finally:
        push.close(0)
        if q is not None:
            q.close()
        indexer.shutdown()


def test_cached_answers_never_outlive_a_generation(qs_factory) -> None:
    q = qs_factory(query__follow_poll_seconds=0.1)
    first = q.ask("query", text="methotrexate monitoring", k=2)
    again = q.ask("query", text="methotrexate monitoring", k=2)
    assert again["hits"] == first["hits"] and q.server.cache.hits == 1
    new = add_docs(q.cfg, {"mtx.md": "# Methotrexate\n\nMethotrexate needs blood count and liver "
                                     "monitoring.\n"})
    index_directly(q.cfg, new)
    drive(q.server, lambda: q.server.known_rows == 4, what="follow poll")
    after = q.ask("query", text="methotrexate monitoring", k=2)  # the same key as before
    assert after["rows"] == 4 and after["hits"][0]["title"] == "Methotrexate"
    assert q.server.cache.hits == 1  # not served from the cache of the old generation


def test_sleep_drops_cache_model_and_connection(qs: QS) -> None:
    assert_good_query(qs)
    assert len(qs.server.cache) == 1 and qs.server.model.loaded and qs.server.store is not None
    qs.ask("sleep")
    assert len(qs.server.cache) == 0 and not qs.server.model.loaded and qs.server.store is None
    assert qs.server.searcher is None
    assert_good_query(qs)  # and everything comes back on demand


def test_a_sleep_gives_memory_back_only_when_something_was_held(qs: QS, monkeypatch: pytest.MonkeyPatch) -> None:
    # Letting go of the libraries' pages costs ~7 ms and a full collection more: a server
    # asked to sleep over and over (a stream of `roxi sleep`) must not spend itself on it.
    released: list[bool] = []
    monkeypatch.setattr(query_server.memory, "release", lambda *, file_pages=False: released.append(file_pages))
    assert_good_query(qs)
    qs.ask("sleep")
    assert released == [True]
    for _ in range(3):
        qs.ask("sleep")  # asleep, nothing opened since: nothing to give back
    assert released == [True]
    vector = np.zeros(DIM + 1, dtype=np.float32)  # a bad vector query opens the store, wakes nothing
    meta, buf = protocol.encode_array(vector[None, :])
    assert qs.ask("query", buf, k=1, **meta)["ok"] is False and qs.server.store is not None
    qs.ask("sleep")
    assert released == [True, True] and qs.server.store is None


def test_bad_request_does_not_wake_a_sleeping_server(qs: QS) -> None:
    reply = qs.ask("query", text="   ")
    assert reply["ok"] is False and qs.server.state is QState.ASLEEP and qs.server.searcher is None


def test_a_queue_of_slow_queries_leaves_room_for_heartbeats(qs_factory, monkeypatch) -> None:
    """Requests are handled for at most half a heartbeat interval per loop step: a busy
    server at 1M rows (30 ms a search) was killed by its supervisor as hung."""
    q = qs_factory(supervisor__heartbeat_seconds=0.2)
    q.ask("wake")
    # The server's clock is a fake one that only a search moves, by 30 ms: the budget is then
    # counted exactly, however slowly a loaded machine runs the step.
    clock = FakeClock(start=time.monotonic())
    monkeypatch.setattr(query_server, "time", SimpleNamespace(monotonic=clock, perf_counter=time.perf_counter))
    real_search = q.server.search

    def slow_search(*args, **kwargs):
        clock.sleep(0.03)
        return real_search(*args, **kwargs)

    monkeypatch.setattr(q.server, "search", slow_search)
    for i in range(12):
        q.dealer.send_multipart([b"", protocol.pack(protocol.request("query", f"slow-{i}", text=f"gout {i}", k=1))])
    served = q.server.served
    steps = []
    while q.server.served - served < 12:
        assert len(steps) < 1000, f"served {q.server.served - served} of 12 in {len(steps)} steps"
        started, before = clock(), q.server.served
        q.server.loop(clock())
        steps.append((q.server.served - before, clock() - started))
    # Every step stopped at its budget, half a heartbeat (0.1 s): the search that crossed it
    # (the fourth of 30 ms) was the last, so no step took more than 0.1 s + one search, and
    # a step with the queue full served 4 (fewer while requests are still arriving).
    assert all(n <= 4 and took <= 0.1 + 0.03 + 1e-9 for n, took in steps), steps
    assert max(n for n, _ in steps) == 4, steps


def test_with_no_indexer_listening_the_events_socket_retries_seldom(qs: QS) -> None:
    """A suspended indexer leaves nothing on the events endpoint for as long as the system
    sleeps: zmq's attempts to reach it back off (to EVENTS_RECONNECT_MAX_MS), not every
    100 ms (~7 wakeups a second of an asleep query server's I/O thread, measured)."""
    from zmq.utils.monitor import recv_monitor_message

    monitor = qs.server.sub.get_monitor_socket(zmq.EVENT_CONNECT_RETRIED)
    try:
        retries, deadline = 0, time.monotonic() + 3.0  # 100, 200, ..., 1600 ms: at most 5 (30 at 100 ms)
        while (left := deadline - time.monotonic()) > 0:
            if monitor.poll(int(left * 1000) + 1):
                recv_monitor_message(monitor)
                retries += 1
        assert retries <= 8, f"{retries} attempts in 3 s"
    finally:
        qs.server.sub.disable_monitor()
        monitor.close(0)
