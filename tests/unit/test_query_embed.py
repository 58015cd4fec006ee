"""Unit tests of text queries embedded off the query server's loop (issue 16).

The query server is driven in-process as in test_roles.py, with a fake remote model whose
encode() waits until the test opens its gate, and the parked queries' deadlines on an
injected clock: nothing here waits for a deadline in wall time.
"""

from __future__ import annotations

import select
import threading
import time
from typing import Sequence

import numpy as np
import pytest
import zmq

from roxi_mp import protocol
from roxi_mp.embedders import EmbedError, Embedder, HashingEmbedder, rate_share
from roxi_mp.roles.query_server import QState
from tests.conftest import FakeClock

from .test_roles import DIM, MODEL_ID, QS, cfg_factory, qs_factory, zctx  # noqa: F401 (fixtures)

#: the parked queries' deadline in these tests, seconds on the fake clock
DEADLINE = 2.0


class SlowRemote(Embedder):
    """A network model that answers when the test says so (`gate`), or fails with `fail`."""

    remote = True

    def __init__(self, *, max_in_flight: int = 2) -> None:
        self.model_id, self.dim = MODEL_ID, DIM
        self.max_in_flight = max_in_flight
        self.inner = HashingEmbedder(dim=DIM)
        self.gate = threading.Event()
        self.calls: list[str] = []
        self.fail: Exception | None = None
        self.status_fields: dict = {}
        self.unloads = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.extend(texts)
        if not self.gate.wait(30):  # a test that forgets the gate fails instead of hanging
            raise EmbedError("the test never opened the gate")
        if self.fail is not None:
            raise self.fail
        return self.inner.encode(texts)

    def unload(self) -> None:
        self.unloads += 1

    def status(self) -> dict:
        return dict(self.status_fields)


@pytest.fixture
def slow(qs_factory, monkeypatch):  # noqa: F811 (the fixture imported above)
    """Factory: a query server over a SlowRemote model and a FakeClock for its deadlines."""
    models: list[SlowRemote] = []

    def make(*, max_in_flight: int = 2, **overrides) -> tuple[QS, SlowRemote, FakeClock]:
        model = SlowRemote(max_in_flight=max_in_flight)
        models.append(model)
        made: list[dict] = []
        monkeypatch.setattr("roxi_mp.roles.query_server.make_embedder", lambda cfg, **kw: made.append(kw) or model)
        q = qs_factory(query__max_k=20, query__embed_timeout_seconds=DEADLINE, **overrides)
        assert made == [{"share": rate_share(q.cfg, "query")}]  # its part of the http rate limits
        clock = FakeClock()
        q.server.embeds.clock = clock
        return q, model, clock

    yield make
    for model in models:
        model.gate.set()  # let every worker finish


def send(q: QS, request_id: str, op: str = "query", *extra: bytes, **fields) -> None:
    q.dealer.send_multipart([b"", protocol.pack(protocol.request(op, request_id, **fields)), *extra])


def step(q: QS, times: int = 3) -> dict[str, dict]:
    """Run the loop `times` steps; the replies that came, by id."""
    out = {}
    for _ in range(times):
        q.server.loop(time.monotonic())
        while q.dealer.poll(0, zmq.POLLIN):
            frames = q.dealer.recv_multipart()
            reply = protocol.unpack_map(frames[1], max_bytes=1 << 24)
            out[reply["id"]] = reply
    return out


def until(q: QS, predicate, what: str, timeout: float = 10.0) -> dict[str, dict]:
    """Step until `predicate()` holds (a guard against hanging, not a measured time)."""
    replies: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        replies.update(step(q, 1))
    return replies


def until_replies(q: QS, *request_ids: str, timeout: float = 10.0) -> dict[str, dict]:
    replies: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while not set(request_ids) <= set(replies):
        assert time.monotonic() < deadline, f"no reply to {set(request_ids) - set(replies)}"
        replies.update(step(q, 1))
    return replies


def until_reply(q: QS, request_id: str) -> dict:
    return until_replies(q, request_id)[request_id]


def park(q: QS, model: SlowRemote, request_id: str, text: str, **fields) -> None:
    """Send a text query and step until a worker is embedding it (or it is queued)."""
    waiting = len(q.server.embeds.parked)
    send(q, request_id, text=text, **fields)
    until(q, lambda: len(q.server.embeds.parked) == waiting + 1, f"{request_id} parked")


def vector_frame(text: str) -> tuple[dict, bytes]:
    meta, buf = protocol.encode_array(HashingEmbedder(dim=DIM).encode([text])[0])
    return meta, bytes(buf)


# --- tests -----------------------------------------------------------------------------------
def test_a_parked_text_query_is_answered_when_its_embedding_is_done(slow) -> None:
    q, model, _ = slow()
    park(q, model, "t1", "urate crystals in the big toe", k=2)
    until(q, lambda: model.calls == ["urate crystals in the big toe"], "the worker to start")
    assert step(q, 5) == {}  # still waiting: no reply, no error
    assert (q.server.served, q.server.errors) == (0, 0)
    assert q.server.stats()["embeds_waiting"] == 1
    model.gate.set()
    reply = until_reply(q, "t1")
    assert reply["ok"] is True and reply["hits"][0]["title"] == "Gout" and len(reply["hits"]) == 2
    assert reply["took_ms"] >= 0 and q.server.served == 1 and q.server.embeds.parked == []
    step(q)
    assert not select.select([q.server.embeds.fileno()], [], [], 0)[0]  # the wake pipe was drained
    # The same text again: its vector is remembered, the service is not asked twice.
    assert q.ask("query", text="urate crystals in the big toe", k=2)["hits"] == reply["hits"]
    assert model.calls == ["urate crystals in the big toe"]


def test_vector_queries_and_stats_are_answered_while_a_text_query_waits(slow) -> None:
    q, model, _ = slow()
    park(q, model, "t1", "lupus nephritis")
    meta, buf = vector_frame("bisphosphonates fracture risk")
    for _ in range(3):
        reply = q.ask("query", buf, k=1, **meta)
        assert reply["ok"] is True and reply["hits"][0]["title"] == "Osteoporosis"
    assert q.ask("ping")["pong"] is True and q.ask("stats")["embeds_waiting"] == 1
    assert q.server.info()["state"] == "running"  # what the heartbeats keep saying
    model.gate.set()
    assert until_reply(q, "t1")["hits"][0]["title"] == "Systemic lupus erythematosus"


def test_embed_timeout_at_the_deadline_and_the_late_vector_is_kept(slow) -> None:
    q, model, clock = slow()
    park(q, model, "t1", "osteoporosis glucocorticoids")
    until(q, lambda: model.calls, "the worker to start")
    clock.now += DEADLINE - 0.01
    assert step(q) == {}
    clock.now += 0.02
    reply = step(q)["t1"]
    assert reply["ok"] is False and reply["code"] == "embed_timeout", reply
    assert "did not answer within 2 s" in reply["message"]
    assert q.server.errors == 1 and q.server.stats()["embed_timeouts"] == 1
    assert len(q.server.embeds.orphans) == 1  # still embedding: counted, not forgotten
    model.gate.set()
    until(q, lambda: not q.server.embeds.orphans, "the late vector")
    assert step(q) == {}  # a late embedding sends no second reply
    again = q.ask("query", text="osteoporosis glucocorticoids", k=1)  # a client's retry
    assert again["ok"] is True and again["hits"][0]["title"] == "Osteoporosis"
    assert model.calls == ["osteoporosis glucocorticoids"]  # answered from the late vector


def test_queued_embeddings_past_their_deadline_are_dropped_and_late_ones_count(slow) -> None:
    q, model, clock = slow(max_in_flight=1, query__embed_max_waiting=2)
    park(q, model, "a", "gout")
    until(q, lambda: model.calls == ["gout"], "the worker to start a")
    park(q, model, "b", "lupus")  # queued behind a: one worker
    clock.now += DEADLINE
    replies = step(q)
    assert {replies["a"]["code"], replies["b"]["code"]} == {"embed_timeout"}
    assert len(q.server.embeds.orphans) == 1  # a runs on; b never started and never will
    # a, still running, counts against embed_max_waiting: one more query waits, not two.
    park(q, model, "c", "osteoporosis")
    send(q, "d", text="methotrexate")
    busy = step(q)["d"]
    assert busy["ok"] is False and busy["code"] == "upstream_unavailable" and "embed_max_waiting" in busy["message"]
    assert q.server.stats()["embeds_refused"] == 1
    model.gate.set()
    assert until_reply(q, "c")["ok"] is True
    assert model.calls == ["gout", "osteoporosis"]  # b's text never reached the service


def test_the_number_of_waiting_text_queries_is_bounded(slow) -> None:
    q, model, _ = slow(query__embed_max_waiting=2)
    park(q, model, "a", "gout")
    park(q, model, "b", "lupus")
    reply = q.ask("query", text="osteoporosis")  # answered at once, while a and b wait
    assert reply["ok"] is False and reply["code"] == "upstream_unavailable"
    assert len(q.server.embeds.parked) == 2
    model.gate.set()
    replies = until_replies(q, "a", "b")
    assert replies["a"]["ok"] is True and replies["b"]["ok"] is True


@pytest.mark.parametrize("error, code", [
    (EmbedError("embedding API answered HTTP 503"), "upstream_unavailable"),
    (EmbedError("embedding API refused the input (HTTP 400)", input_error=True), "embed_failed"),
    (RuntimeError("a bug in the backend"), "internal"),
    (SystemExit(3), "internal"),  # raised in a worker thread, never in the loop
])
def test_a_failed_embedding_is_an_error_reply(slow, error: Exception, code: str) -> None:
    q, model, _ = slow()
    model.fail = error
    park(q, model, "t1", "gout")
    model.gate.set()
    reply = until_reply(q, "t1")
    assert reply["ok"] is False and reply["code"] == code and str(error) in reply["message"]
    assert q.ask("query", text="gout")["code"] == code  # a failure is not remembered as a vector


def test_a_service_backed_off_past_the_deadline_is_refused_at_once(slow) -> None:
    q, model, _ = slow()
    model.status_fields = {"backoff_seconds": DEADLINE + 1, "last_error": "HTTP 503"}
    reply = q.ask("query", text="gout")
    assert reply["ok"] is False and reply["code"] == "upstream_unavailable" and "HTTP 503" in reply["message"]
    assert model.calls == []
    model.status_fields = {"backoff_seconds": DEADLINE / 2}  # may be over in time: it waits
    park(q, model, "t1", "gout")
    model.gate.set()
    assert until_reply(q, "t1")["ok"] is True


def test_embed_timeout_names_the_services_last_error(slow) -> None:
    q, model, clock = slow()
    model.status_fields = {"transport_errors": 3, "last_error": "old"}
    park(q, model, "t1", "gout")
    model.status_fields = {"transport_errors": 4, "last_error": "ReadTimeout"}
    clock.now += DEADLINE
    reply = step(q)["t1"]
    assert reply["code"] == "embed_timeout" and "its last error: ReadTimeout" in reply["message"]


def test_sleep_while_a_text_query_waits_still_answers_it(slow) -> None:
    q, model, _ = slow()
    park(q, model, "t1", "urate crystals", k=1)
    until(q, lambda: model.calls, "the worker to start")
    reply = q.ask("sleep")
    assert reply["state"] == "asleep" and q.server.searcher is None and model.unloads == 1
    assert q.server.state is QState.ASLEEP and q.server.embeds.memo == {}
    model.gate.set()
    answer = until_reply(q, "t1")  # the query came before the sleep: it is answered
    assert answer["ok"] is True and answer["hits"][0]["title"] == "Gout"
    assert q.server.state is QState.AWAKE
    # Asleep with nothing waiting, no worker thread is left.
    q.ask("sleep")
    until(q, lambda: q.server.embeds.pool.alive == 0, "the workers to exit")
    park(q, model, "t2", "lupus")  # and they come back on demand
    assert until_reply(q, "t2")["ok"] is True


def test_an_idle_server_does_not_sleep_under_a_waiting_query(slow) -> None:
    q, model, _ = slow(query__idle_seconds=0.05)
    park(q, model, "t1", "gout")
    q.server.last_query -= 1.0  # idle for longer than idle_seconds
    step(q)
    assert q.server.state is QState.AWAKE
    model.gate.set()
    assert until_reply(q, "t1")["ok"] is True


def test_shutdown_answers_every_waiting_query(slow, monkeypatch) -> None:
    q, model, _ = slow()
    park(q, model, "t1", "gout")
    sent: list[list[bytes]] = []
    monkeypatch.setattr(q.server, "_send", sent.append)
    q.server.shutdown()
    assert len(sent) == 1
    reply = protocol.unpack_map(sent[0][-1], max_bytes=4096)
    assert (reply["id"], reply["code"]) == ("t1", "upstream_unavailable") and "stopping" in reply["message"]


def test_a_local_model_embeds_inline(qs_factory) -> None:  # noqa: F811
    q = qs_factory()
    assert q.server.embeds is None  # hashing: no workers, no parking, no wake pipe
    assert q.ask("query", text="gout")["ok"] is True
