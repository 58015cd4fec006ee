"""The query server's fast path for plain vector queries (issue 21): it answers byte for byte
as the general path does, for every mode, dtype, shape, k and with_text; it answers nothing
else (every bad or unusual request gets the general path's reply); and a delete or a
replacement committed by another connection is seen by the very next query.

A real Store and vectors files in tmp_path; the query server driven in-process over its
real ROUTER socket (tests/unit/test_roles.py), as in test_query_visibility.py.
"""

from __future__ import annotations

import sqlite3
import time

import numpy as np
import pytest

from roxi_mp import protocol
from roxi_mp.embedders.hashing import HashingEmbedder

from .test_query_visibility import EXTRA, GOUT, GOUT_QUERY, NO_FOLLOW, chunk_ids, delete, put, versions
from .test_roles import (  # noqa: F401 (fixtures)
    DIM, QS, add_docs, cfg_factory, index_directly, qs_factory, zctx,
)
from .test_row_fields import built

#: the configured ways a vector query is scored: the fast path takes each
SCORINGS = [("dense", "weighted"), ("hybrid", "weighted"), ("hybrid", "rrf")]


def make(qs_factory, mode: str = "hybrid", fusion: str = "weighted", **overrides) -> QS:  # noqa: F811
    q = qs_factory(**{**NO_FOLLOW, "query__mode": mode, "query__fusion": fusion, **overrides})
    index_directly(q.cfg, add_docs(q.cfg, EXTRA))
    built(q)  # awake, with every row's fields read
    ask(q, vector("warm up"), k=3)  # the general path's first vector query
    return q


@pytest.fixture(params=SCORINGS, ids=["-".join(s) for s in SCORINGS])
def q(request, qs_factory) -> QS:  # noqa: F811
    return make(qs_factory, *request.param, query__cache_entries=0)


def vector(text: str, dtype=np.float32) -> np.ndarray:
    return HashingEmbedder(dim=DIM).encode([text])[0].astype(dtype)


def frame(vec: np.ndarray) -> tuple[bytes, dict]:
    meta, buf = protocol.encode_array(vec)
    return bytes(buf), meta


def ask(q: QS, vec: np.ndarray, **fields) -> dict:
    buf, meta = frame(vec)
    return q.ask("query", buf, **fields, **meta)


def general(q: QS, *extra: bytes, **fields) -> dict:
    """The reply with the fast path out of the way."""
    q.server.fast_query = lambda frames, now: None
    try:
        return q.ask("query", *extra, **fields)
    finally:
        del q.server.fast_query


def same(a: dict, b: dict) -> bool:
    """Equal as packed bytes, but for the request id and the time taken."""
    def norm(reply: dict) -> bytes:
        return protocol.pack({**reply, "id": None, **({"took_ms": 0} if "took_ms" in reply else {})})
    return norm(a) == norm(b)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape", ["1-d", "2-d"])
def test_the_fast_path_answers_as_the_general_path_does(q: QS, dtype, shape) -> None:
    rng = np.random.default_rng(3)
    texts = [GOUT_QUERY, "bisphosphonates fracture risk", "filler note topic3"]
    queries = [vector(t, dtype) for t in texts] + [rng.standard_normal(DIM).astype(dtype) for _ in range(3)]
    for i, vec in enumerate(queries):
        vec = vec if shape == "1-d" else vec[None, :]
        for k in (1, 4, 20):
            for with_text in (True, False):
                fields = {"k": k, "with_text": with_text} if i % 2 else {"k": k, **({} if with_text else
                                                                                   {"with_text": False})}
                served = q.server.fast_served
                fast = q.ask("query", *frame(vec)[:1], **fields, **frame(vec)[1])
                assert q.server.fast_served == served + 1, "the fast path did not answer"
                slow = general(q, *frame(vec)[:1], **fields, **frame(vec)[1])
                assert q.server.fast_served == served + 1
                assert fast["ok"] is True and len(fast["hits"]) == min(k, 8) and same(fast, slow), (fast, slow)
                assert all(("text" in hit) == with_text for hit in fast["hits"])


def test_cached_answers_are_the_same_either_way(qs_factory) -> None:  # noqa: F811
    q = make(qs_factory)
    buf, meta = frame(vector(GOUT_QUERY))
    first = q.ask("query", buf, k=4, **meta)  # computed, by the fast path
    assert q.server.fast_served == 1 and q.server.cache.hits == 0
    again = q.ask("query", buf, k=4, **meta)
    assert q.server.fast_served == 2 and q.server.cache.hits == 1 and same(first, again)
    assert same(general(q, buf, k=4, **meta), first) and q.server.cache.hits == 2


def _vec(rows: int = 1, dim: int = DIM, *, bad: float | None = None, dtype=np.float32) -> tuple[bytes, dict]:
    m = np.full((rows, dim), 0.01, dtype=dtype)
    if bad is not None:
        m[0, 0] = bad
    return frame(m)


GOOD = _vec()
#: requests the fast path must leave to the general path: (extra frames, fields)
UNUSUAL = {
    "k zero": ([GOOD[0]], {**GOOD[1], "k": 0}),
    "k above max_k": ([GOOD[0]], {**GOOD[1], "k": 21}),
    "k as bool": ([GOOD[0]], {**GOOD[1], "k": True}),
    "k as float": ([GOOD[0]], {**GOOD[1], "k": 3.0}),
    "with_text as int": ([GOOD[0]], {**GOOD[1], "with_text": 1}),
    "version as bool": ([GOOD[0]], {**GOOD[1], "v": True}),
    "version 2": ([GOOD[0]], {**GOOD[1], "v": 2}),
    "vector wrong dim": ([_vec(dim=128)[0]], _vec(dim=128)[1]),
    "vector with nan": ([_vec(bad=float("nan"))[0]], GOOD[1]),
    "vector with inf": ([_vec(bad=float("inf"))[0]], GOOD[1]),
    "vector with -inf": ([_vec(bad=float("-inf"))[0]], GOOD[1]),
    "float16 with nan": ([_vec(bad=float("nan"), dtype=np.float16)[0]], _vec(dtype=np.float16)[1]),
    "two vector rows": ([_vec(rows=2)[0]], _vec(rows=2)[1]),
    "zero rows": ([b"x"], {"dtype": "float32", "shape": [0, DIM]}),
    "short frame": ([GOOD[0][:-4]], GOOD[1]),
    "two frames": ([GOOD[0], GOOD[0]], GOOD[1]),
    "dtype float64": ([GOOD[0]], {**GOOD[1], "dtype": "float64"}),
    "dtype unhashable": ([GOOD[0]], {**GOOD[1], "dtype": ["float32"]}),
    "bool shape": ([GOOD[0]], {"dtype": "float32", "shape": [True, DIM]}),
    "float shape": ([GOOD[0]], {"dtype": "float32", "shape": [1.0, float(DIM)]}),
    "shape of three": ([GOOD[0]], {"dtype": "float32", "shape": [1, 1, DIM]}),
    "shape not a list": ([GOOD[0]], {"dtype": "float32", "shape": DIM}),
    "an option of its own": ([GOOD[0]], {**GOOD[1], "mode": "dense"}),
    "weights": ([GOOD[0]], {**GOOD[1], "weights": {"dense": 0.5}}),
    "text too": ([GOOD[0]], {**GOOD[1], "text": GOUT_QUERY}),
    "a field nobody knows": ([GOOD[0]], {**GOOD[1], "colour": "blue"}),
}


@pytest.mark.parametrize("name", list(UNUSUAL))
def test_every_other_request_gets_the_general_paths_reply(qs_factory, name: str) -> None:  # noqa: F811
    q = make(qs_factory, query__max_k=20, query__cache_entries=0)
    extra, fields = UNUSUAL[name]
    served, errors = q.server.fast_served, q.server.errors
    reply = q.ask("query", *extra, **fields)
    assert q.server.fast_served == served, "the fast path answered it"
    assert same(reply, general(q, *extra, **fields)), reply
    assert q.server.errors == errors + 2 * (not reply["ok"])
    assert ask(q, vector(GOUT_QUERY), k=2)["hits"][0]["key"] == GOUT  # and serves on
    assert q.server.fast_served == served + 1


def test_a_huge_but_finite_vector_is_answered_as_the_general_path_does(qs_factory) -> None:  # noqa: F811
    q = make(qs_factory, query__cache_entries=0)
    for big in (3e38, -3e38):
        vec = np.full(DIM, big, dtype=np.float32)  # whose squares and sums overflow float32
        fast = ask(q, vec, k=3)
        assert fast["ok"] is True and same(fast, general(q, *frame(vec)[:1], k=3, **frame(vec)[1]))
    assert q.server.fast_served == 2


def test_an_envelope_of_more_than_an_identity_goes_the_general_way(qs_factory) -> None:  # noqa: F811
    q = make(qs_factory)
    buf, meta = frame(vector(GOUT_QUERY))
    body = protocol.pack(protocol.request("query", "r1", k=2, **meta))
    sent: list[list[bytes]] = []
    q.server._send = sent.append
    q.server.handle([b"id", b"hop", b"", body, buf], time.monotonic())  # through a proxy
    q.server.handle([b"id", b"x", body, buf], time.monotonic())  # no delimiter: b"x" is the request
    assert q.server.fast_served == 0
    assert sent[0][:3] == [b"id", b"hop", b""] and protocol.unpack_map(sent[0][3], max_bytes=1 << 20)["ok"] is True
    assert sent[1][0] == b"id" and protocol.unpack_map(sent[1][1], max_bytes=1 << 20)["ok"] is False
    q.server.handle([b"id", b"", body, buf], time.monotonic())
    assert q.server.fast_served == 1 and sent[2][:2] == [b"id", b""] and len(sent[2]) == 3
    del q.server._send


def test_it_waits_for_the_row_fields_the_model_check_and_the_first_vector_query(qs_factory) -> None:  # noqa: F811
    q = make(qs_factory)
    buf, meta = frame(vector(GOUT_QUERY))
    frames = [b"id", b"", protocol.pack(protocol.request("query", "r1", k=2, **meta)), buf]
    assert q.server.fast_query(frames, time.monotonic()) is not None
    fields, q.server.view.fields = q.server.view.fields, None  # not read yet (or dropped)
    assert q.server.fast_query(frames, time.monotonic()) is None
    q.server.view.fields = fields
    q.server.model_checked = False  # the store's model not checked since it was opened
    assert q.server.fast_query(frames, time.monotonic()) is None
    q.server.model_checked, q.server.vector_options = True, None
    assert q.server.fast_query(frames, time.monotonic()) is None
    q.ask("sleep")
    assert q.server.fast_query(frames, time.monotonic()) is None  # asleep: handle() never asks it


def test_a_fast_path_failing_halfway_leaves_the_answer_to_the_general_path(qs_factory, monkeypatch) -> None:  # noqa: F811
    q = make(qs_factory, query__cache_entries=0)
    store, calls = q.server.store, []
    real = store._texts

    def busy_once(chunk_ids):
        calls.append(chunk_ids)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        return real(chunk_ids)

    monkeypatch.setattr(store, "_texts", busy_once)
    reply = ask(q, vector(GOUT_QUERY), k=3)
    assert reply["ok"] is True and reply["hits"][0]["key"] == GOUT and reply["hits"][0]["text"]
    assert len(calls) == 2 and q.server.fast_served == 0 and q.server.errors == 0
    assert same(ask(q, vector(GOUT_QUERY), k=3), reply) and q.server.fast_served == 1


def test_a_lexical_server_refuses_a_vector_alone_as_before(qs_factory) -> None:  # noqa: F811
    q = qs_factory(**NO_FOLLOW, query__mode="lexical")
    built(q)
    for _ in range(2):
        reply = ask(q, vector(GOUT_QUERY), k=2)
        assert reply["ok"] is False and reply["code"] == "bad_request" and "lexical" in reply["message"]
    assert q.server.fast_served == 0


@pytest.mark.parametrize("cache_entries", [0, 256])
def test_a_delete_is_seen_by_the_very_next_vector_query(qs_factory, cache_entries: int) -> None:  # noqa: F811
    q = make(qs_factory, query__cache_entries=cache_entries)
    buf, meta = frame(vector(GOUT_QUERY))
    for _ in range(2):
        assert q.ask("query", buf, k=3, **meta)["hits"][0]["key"] == GOUT
    fast = q.server.fast_served
    delete(q.cfg, GOUT)  # another connection commits
    after = q.ask("query", buf, k=3, **meta)
    assert GOUT not in {key for key, _ in versions(after)} and len(after["hits"]) == 3
    assert q.server.fast_served == fast  # the commit sent it the general way, through a snapshot
    for _ in range(3):
        again = q.ask("query", buf, k=3, **meta)
        assert same(again, after)
    assert q.server.fast_served == fast + 3  # then the fast path again, the document still gone


def test_a_replacement_is_served_by_the_fast_path_only_once_promoted(qs_factory) -> None:  # noqa: F811
    q = make(qs_factory, query__max_k=20)
    v2 = ["Gout: urate crystals in the big toe, treated with allopurinol to a urate target.",
          "Febuxostat is the alternative when allopurinol is not tolerated in gout."]
    buf, meta = frame(vector(v2[0]))
    assert (GOUT, 1) in versions(q.ask("query", buf, k=20, **meta))
    assert put(q.cfg, GOUT, v2).outcome == "replaced"
    ids = chunk_ids(q.cfg, GOUT, 2)
    index_directly(q.cfg, ids[:1])  # a row of v2, still pending: hidden
    for _ in range(3):  # the general path after the commit, then the fast one
        assert {v for k, v in versions(q.ask("query", buf, k=20, **meta)) if k == GOUT} == {1}
    fast = q.server.fast_served
    index_directly(q.cfg, ids[1:])  # the last chunk: the commit promotes v2, v1 dies
    for _ in range(3):
        reply = q.ask("query", buf, k=20, **meta)
        assert {v for k, v in versions(reply) if k == GOUT} == {2} and reply["hits"][0]["key"] == GOUT
    assert q.server.fast_served == fast + 2
