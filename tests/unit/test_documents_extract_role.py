"""The documents role's puts of PDF, HTML and DOCX, driven in-process with a fake Extractor
and an injected clock: checked at once, queued (bounded: `busy` beyond), answered when the
extraction ends (to the client that asked, whoever else talks meanwhile), an extraction
error a one-line bad_request with the store unchanged, the heartbeat going out all the
while, and the extractor closed when the role sleeps or stops, never in the middle."""

from __future__ import annotations

import os
import time
from typing import Callable, Iterator

import pytest
import zmq

from roxi_mp import protocol
from roxi_mp.config import Config
from roxi_mp.extract import HTML, PDF, Extracted, ExtractError, Section
from roxi_mp.roles.base import Runner
from roxi_mp.roles.documents import DocumentsRole
from roxi_mp.store import Store
from tests.conftest import PATIENCE
from tests.unit.test_documents_role import cfg_factory, zctx  # noqa: F401 (fixtures)

PDF_BYTES = b"%PDF-1.7\n1 0 obj << >> endobj\n%%EOF\n"
HTML_BYTES = b"<!doctype html><html><body><p>Gout.</p></body></html>"
WORDS = " ".join(f"urate{i} crystal{i}." for i in range(30))


def sections(tag: str = "") -> Extracted:
    return Extracted(PDF, f"Guideline {tag}".strip(), [Section("Gout", page=1, heading="Gout", kind="heading"),
                                                      Section(f"{tag} {WORDS}", page=2, heading="Gout")], pages=2)


class FakeExtractor:
    """The Extractor's non-blocking API; the test says when a document is done (`finish`),
    and a document not done `timeout` seconds after its first poll fails as the real one's."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.timeout = timeout
        self.submitted: list[tuple[int, bytes, str]] = []
        self.current: int | None = None
        self.started: float | None = None  # the first poll's `now` after a submit
        self.ready: list[tuple[int, object]] = []
        self.polls: list[float] = []
        self.unread = 0  # bytes written to the pipe by finish()
        self.closed = 0

    def submit(self, token: int, data: bytes, content_type: str) -> None:
        assert self.current is None, "one document at a time"
        self.submitted.append((token, data, content_type))
        self.current, self.started = token, None

    def fileno(self) -> int:
        return self.read_fd

    def busy(self) -> bool:
        return self.current is not None

    def finish(self, result: object) -> None:
        self.ready.append((self.current, result))
        os.write(self.write_fd, b"x")  # the pipe turns readable, as the worker's answer would
        self.unread += 1

    def poll(self, now: float) -> list[tuple[int, object]]:
        self.polls.append(now)
        if self.current is not None and not self.ready:
            self.started = now if self.started is None else self.started
            if now - self.started >= self.timeout:
                self.ready.append((self.current, ExtractError(f"took over {self.timeout:g} s (extract.timeout_seconds)")))
        if not self.ready:
            return []
        if self.unread:
            os.read(self.read_fd, self.unread)
            self.unread = 0
        done, self.ready, self.current = self.ready, [], None
        return done

    def close(self) -> None:
        self.closed += 1
        self.current, self.ready = None, []

    def release(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


class Harness:
    """The role, a fake extractor per worker start, dealers, and a clock the test moves."""

    def __init__(self, cfg: Config, ctx: zmq.Context) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.role = DocumentsRole(cfg, ctx)
        self.extractors: list[FakeExtractor] = []
        self.role.new_extractor = self._new_extractor
        self.role.initialize()
        self.now = time.monotonic()
        self.dealers: list[zmq.Socket] = []

    def _new_extractor(self) -> FakeExtractor:
        self.extractors.append(FakeExtractor())
        return self.extractors[-1]

    @property
    def fake(self) -> FakeExtractor:
        return self.extractors[-1]

    def dealer(self) -> zmq.Socket:
        sock = protocol.configure(self.ctx.socket(zmq.DEALER), hwm=10)
        sock.connect(self.cfg.endpoint("documents"))
        self.dealers.append(sock)
        return sock

    def send(self, dealer: zmq.Socket, op: str, request_id: object, **fields) -> None:
        dealer.send_multipart([b"", protocol.pack(protocol.request(op, request_id, **fields))])

    def step(self, seconds: float = 0.0) -> None:
        self.now += seconds
        self.role.loop(self.now)

    def reply(self, dealer: zmq.Socket) -> dict:
        """Step until `dealer` has its reply. Bounded in real time, not in steps: a step may
        return at once (the role's fake clock says a beat is due) while the message is still
        in zmq's I/O threads, which a loaded machine runs late."""
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            if dealer.poll(0, zmq.POLLIN):
                return protocol.unpack_map(dealer.recv_multipart()[1], max_bytes=1 << 20)
            self.step()
        raise AssertionError("no reply")

    def queued(self, count: int) -> None:
        """Step until `count` puts wait for extraction (the requests are on their way; bounded
        in real time, as `reply`)."""
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            if len(self.role.extractions) == count and self.role.extractions.current is not None:
                return
            self.step()
            time.sleep(0.001)
        raise AssertionError(f"{len(self.role.extractions)} puts wait for extraction, not {count}")

    def no_reply(self, dealer: zmq.Socket, steps: int = 5) -> None:
        for _ in range(steps):
            self.step()
        assert not dealer.poll(0, zmq.POLLIN), "answered before its extraction ended"

    def close(self) -> None:
        for sock in self.dealers:
            sock.close(0)
        self.role.shutdown()
        for fake in self.extractors:
            fake.release()


@pytest.fixture
def harness_factory(cfg_factory, zctx) -> Iterator[Callable[..., Harness]]:  # noqa: F811
    made: list[Harness] = []

    def make(**overrides) -> Harness:
        made.append(Harness(cfg_factory(**overrides), zctx))
        return made[-1]

    yield make
    for h in made:
        h.close()


@pytest.fixture
def h(harness_factory) -> Harness:
    return harness_factory()


def stored(cfg: Config, key: str) -> list[tuple]:
    with Store(cfg.db_path) as store:
        return store.conn.execute(
            "SELECT d.title, d.content_type, c.position, c.page, c.heading FROM documents d "
            "JOIN chunks c ON c.doc_id = d.id WHERE d.key = ? ORDER BY c.position", (key,)).fetchall()


# --- a put waits for its extraction, and the others go on -----------------------------------
def test_a_pdf_is_answered_when_extracted_and_other_requests_are_served_meanwhile(h) -> None:
    waiting, other = h.dealer(), h.dealer()
    h.send(waiting, "put", "pdf-1", key="guides/gout.pdf", content=PDF_BYTES, metadata={"year": 2022})
    h.queued(1)
    h.no_reply(waiting)
    assert h.fake.submitted == [(1, PDF_BYTES, PDF)] and h.role.stats()["extracting"] == 1
    h.send(other, "put", "txt-1", key="notes", content="plain words, stored at once")
    assert h.reply(other)["outcome"] == "added"  # a text put does not wait behind the PDF
    h.send(other, "ping", "p")
    assert h.reply(other)["pong"]
    h.fake.finish(sections("A"))
    reply = h.reply(waiting)
    assert reply["ok"] and reply["id"] == "pdf-1" and reply["outcome"] == "added" and reply["chunks"] >= 2
    assert not other.poll(0, zmq.POLLIN)  # the late reply went to its own client only
    rows = stored(h.cfg, "guides/gout.pdf")
    assert {(title, ctype) for title, ctype, *_ in rows} == {("Guideline A", PDF)}
    assert rows[0][3:] == (1, "Gout") and rows[-1][3] == 2  # page and heading of each chunk
    s = h.role.stats()
    assert (s["puts"], s["added"], s["extracting"], s["extracted"], s["work"]) == (2, 2, 0, 1, 2)


def test_an_extraction_error_is_a_one_line_bad_request_and_stores_nothing(h) -> None:
    dealer = h.dealer()
    h.send(dealer, "put", 7, key="locked.pdf", content=PDF_BYTES)
    h.queued(1)
    h.no_reply(dealer)
    h.fake.finish(ExtractError("encrypted; not supported"))
    reply = h.reply(dealer)
    assert (reply["ok"], reply["id"], reply["code"], reply["message"]) == (
        False, 7, "bad_request", "encrypted; not supported")
    assert stored(h.cfg, "locked.pdf") == []
    s = h.role.stats()
    assert (s["errors"], s["extract_failures"], s["puts"], s["extracting"]) == (1, 1, 0, 0)
    h.send(dealer, "put", 8, key="fine.pdf", content=PDF_BYTES)  # the next document is extracted as usual
    h.queued(1)
    h.fake.finish(sections())
    assert h.reply(dealer)["outcome"] == "added"


def test_bad_fields_and_contradicting_bytes_are_answered_at_once(h) -> None:
    dealer = h.dealer()
    for fields, needle in (({"key": "", "content": PDF_BYTES}, "key is empty"),
                           ({"key": "k", "content": HTML_BYTES, "content_type": PDF}, "content is HTML"),
                           ({"key": "k", "content": PDF_BYTES, "metadata": {"a": [1]}}, "flat map"),
                           ({"key": "k", "content": b"\x7fELF\x02\x01\x01"}, "binary content")):
        h.send(dealer, "put", 1, **fields)
        reply = h.reply(dealer)
        assert reply["code"] == "bad_request" and needle in reply["message"]
    assert h.extractors == []  # nothing reached an extractor


def test_the_queue_is_bounded_busy_beyond_and_served_in_order(harness_factory) -> None:
    h = harness_factory(documents__max_pending_extractions=2)
    a, b, c = h.dealer(), h.dealer(), h.dealer()
    h.send(a, "put", "a", key="a", content=PDF_BYTES)
    h.send(b, "put", "b", key="b", content=HTML_BYTES)
    h.queued(2)
    h.no_reply(a)
    h.send(c, "put", "c", key="c", content=PDF_BYTES)
    busy = h.reply(c)
    assert busy["code"] == "busy" and "max_pending_extractions" in busy["message"]
    assert not a.poll(0, zmq.POLLIN) and not b.poll(0, zmq.POLLIN)
    assert [t for t, _, _ in h.fake.submitted] == [1]  # one at a time, in arrival order
    h.fake.finish(sections("A"))
    assert h.reply(a)["outcome"] == "added"
    h.queued(1)
    assert h.fake.submitted[-1][1:] == (HTML_BYTES, HTML)
    h.send(c, "put", "c2", key="c", content=PDF_BYTES)  # room again: queued, not refused
    h.queued(2)
    h.fake.finish(sections("B"))
    assert h.reply(b)["outcome"] == "added"
    h.fake.finish(sections("C"))
    assert h.reply(c)["id"] == "c2"
    assert [row[0] for row in stored(h.cfg, "b")][:1] == ["Guideline B"]


def test_a_worker_that_cannot_start_answers_that_put_and_the_role_goes_on(h) -> None:
    dealer = h.dealer()

    class Broken(FakeExtractor):
        def submit(self, token, data, content_type):
            raise OSError("cannot fork")

    h.role.new_extractor = lambda: h.extractors.append(Broken()) or h.extractors[-1]
    h.send(dealer, "put", 1, key="k", content=PDF_BYTES)
    assert h.reply(dealer)["code"] == "internal"
    assert h.role.stats()["extracting"] == 0
    h.send(dealer, "put", 2, key="t", content="plain words")
    assert h.reply(dealer)["outcome"] == "added"


# --- liveness and sleep ------------------------------------------------------------------------
def test_the_heartbeat_goes_on_through_a_long_extraction_which_times_out(cfg_factory, zctx) -> None:  # noqa: F811
    cfg = cfg_factory(embedder__idle_seconds=5.0)
    beats = protocol.configure(zctx.socket(zmq.PULL), hwm=1000)
    beats.bind(cfg.endpoint("heartbeat"))
    role = DocumentsRole(cfg, zctx)
    fakes: list[FakeExtractor] = []
    role.new_extractor = lambda: fakes.append(FakeExtractor(timeout=30.0)) or fakes[-1]
    runner = Runner(role)
    dealer = protocol.configure(zctx.socket(zmq.DEALER), hwm=10)
    dealer.connect(cfg.endpoint("documents"))
    try:
        assert runner.boot() == 0
        now = time.monotonic()
        dealer.send_multipart([b"", protocol.pack(protocol.request("put", "slow", key="slow", content=PDF_BYTES))])
        for _ in range(200):
            runner.step(now)
            if fakes and fakes[0].busy():
                break
        started = now
        seen = []
        while not dealer.poll(0, zmq.POLLIN):  # a second of the clock per step, never a wall-time wait
            assert now - started < 40, "not timed out"
            now += 1.0
            wall = time.monotonic()
            runner.step(now)
            assert time.monotonic() - wall < PATIENCE / 4  # a step returns; nothing waits for the child
            while beats.poll(0):
                seen.append(protocol.parse_heartbeat(beats.recv()))
        reply = protocol.unpack_map(dealer.recv_multipart()[1], max_bytes=1 << 20)
        assert reply["code"] == "bad_request" and reply["message"] == "took over 30 s (extract.timeout_seconds)"
        during = [b for b in seen if b["extracting"] == 1]
        assert len(during) >= 29  # one per step (heartbeat_seconds 0.1 < 1 s a step) for 30 s
        assert {b["state"] for b in during} == {"running"}  # idle_seconds 5 passed: never asleep mid-extraction
        assert fakes[0].closed == 0
        runner.step(now + 5.0)  # idle after the reply: asleep, the worker killed
        assert role.state_name() == "asleep" and fakes[0].closed == 1 and role.extractions.extractor is None
    finally:
        dealer.close(0)
        beats.close(0)
        runner.close()
        for fake in fakes:
            fake.release()


def test_sleep_waits_for_the_extraction_then_closes_the_extractor_and_a_put_wakes_it(harness_factory) -> None:
    h = harness_factory(embedder__idle_seconds=30.0)
    dealer = h.dealer()
    h.send(dealer, "put", 1, key="k", content=PDF_BYTES)
    h.queued(1)
    h.step(31.0)
    h.role.command({"op": "sleep"}, h.now)  # `roxi sleep` mid-extraction: not now
    assert h.role.state_name() == "running" and h.fake.closed == 0
    h.fake.finish(sections())
    assert h.reply(dealer)["outcome"] == "added"
    h.step(29.0)
    assert h.role.state_name() == "running"
    h.step(2.0)
    assert h.role.state_name() == "asleep" and h.fake.closed == 1 and h.role.store is None
    h.send(dealer, "put", 2, key="k2", content=HTML_BYTES)  # a put while asleep wakes the role
    h.queued(1)
    assert h.role.state_name() == "running" and len(h.extractors) == 2  # a fresh worker
    h.fake.finish(sections("2"))
    assert h.reply(dealer)["outcome"] == "added"


def test_shutdown_answers_the_waiting_puts_and_closes_the_extractor(h) -> None:
    a, b = h.dealer(), h.dealer()
    h.send(a, "put", "a", key="a", content=PDF_BYTES)
    h.send(b, "put", "b", key="b", content=PDF_BYTES)
    h.queued(2)
    fake = h.fake
    h.role.shutdown()
    for dealer, request_id in ((a, "a"), (b, "b")):
        assert dealer.poll(int(PATIENCE * 1000))
        reply = protocol.unpack_map(dealer.recv_multipart()[1], max_bytes=1 << 20)
        assert (reply["id"], reply["code"]) == (request_id, "busy") and "stopping" in reply["message"]
    assert fake.closed == 1
    h.role.router = None  # closed already: the fixture's shutdown has nothing left to do
