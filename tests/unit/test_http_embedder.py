"""Unit tests of the HTTP embedder against a real fake OpenAI server on 127.0.0.1.

The embedder and the server share a fake clock: backoffs, pauses and rate-limit waits take
no real time, and what the tests check about them (who waited, how long, how requests were
spaced at the server) is exact however loaded the machine is. Only the socket timeouts are
real, and they are generous except where a timeout is the point.
"""

from __future__ import annotations

import heapq
import logging
import re
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from roxi_mp.embedders.base import EmbedError
from roxi_mp.embedders.hashing import HashingEmbedder
from roxi_mp.embedders.http import HttpEmbedder, estimate_tokens, retry_after_seconds
from roxi_mp.embedders.http_request import server_message
from roxi_mp.errors import BadInput, ConfigError
from tests.conftest import FakeClock, wait_until
from tests.fake_openai import FakeOpenAI

DIM = 64
KEY_ENV = "ROXI_TEST_EMBED_KEY"
SECRET = "sk-test-SECRET-4f9c2e7d1b"
WRONG_SECRET = "sk-test-WRONGKEY-8a1d3c"
TEXTS = ["uric acid crystals in the big toe", "lupus nephritis", "giant cell arteritis with jaw pain"]
# Backoffs of at most 0.1 s (of fake time); a socket timeout no healthy local reply needs.
FAST = {"backoff_initial_seconds": 0.01, "backoff_max_seconds": 0.1, "timeout_seconds": 5.0,
        "max_retries": 4}
#: real seconds a test waits for a thread or a request, at most (30): a loaded machine is slow
PATIENCE = 30.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(clock: FakeClock) -> Iterator[FakeOpenAI]:
    with FakeOpenAI(dim=DIM, clock=clock) as fake:
        yield fake


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


class SharedClock:
    """Virtual time shared by `workers` threads, as if they ran at once on an idle machine.

    A sleep blocks its thread; time stands still while any worker runs (its HTTP request
    takes no virtual time), and when every worker sleeps or is `done()`, time jumps to the
    earliest wake-up and wakes whoever was due then. A server stamping arrivals on this
    clock sees each request exactly when the client's limiter let it go.
    """

    def __init__(self, workers: int, start: float = 1000.0) -> None:
        self.now = start
        self._running = workers
        self._due: list[float] = []  # wake-up times of the sleepers, a heap
        self._changed = threading.Condition()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._changed:
            wake = self.now + seconds
            heapq.heappush(self._due, wake)
            self._running -= 1
            self._advance()
            if not self._changed.wait_for(lambda: self.now >= wake, timeout=PATIENCE):
                raise AssertionError("virtual time stuck: a worker neither sleeps nor ends")

    def done(self) -> None:
        with self._changed:
            self._running -= 1
            self._advance()

    def _advance(self) -> None:
        if self._running or not self._due:
            return
        self.now = max(self.now, self._due[0])
        while self._due and self._due[0] <= self.now:
            heapq.heappop(self._due)
            self._running += 1  # counted here, not when it resumes: time must wait for it
        self._changed.notify_all()


def make(server: FakeOpenAI, **kwargs) -> HttpEmbedder:
    """An embedder of `server`, on the server's (fake) clock unless told otherwise."""
    options = {**FAST, "api_key_env": KEY_ENV, "clock": server.clock, "sleep": server.clock.sleep, **kwargs}
    return HttpEmbedder(base_url=server.url, model="text-embedding-test", dim=DIM, **options)


def expected(texts: list[str]) -> np.ndarray:
    return HashingEmbedder(dim=DIM).encode(texts)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --- happy path -------------------------------------------------------------------------
def test_encode_returns_unit_rows_in_input_order(server: FakeOpenAI) -> None:
    emb = make(server)
    assert emb.model_id == "http:text-embedding-test" and emb.dim == DIM and emb.max_in_flight == 4
    out = emb.encode(TEXTS)
    assert out.shape == (3, DIM) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out, expected(TEXTS), atol=1e-6)
    assert server.requests[0][1] == 3
    assert server.texts_embedded == {t: 1 for t in TEXTS}
    status = emb.status()
    assert status["requests"] == 1 and status["retries"] == 0 and status["last_error"] is None
    assert status["backoff_seconds"] == 0


def test_reply_order_is_taken_from_the_indices(server: FakeOpenAI) -> None:
    server.script("reorder")
    np.testing.assert_allclose(make(server).encode(TEXTS), expected(TEXTS), atol=1e-6)


def test_empty_texts_cost_no_request(server: FakeOpenAI) -> None:
    emb = make(server)
    assert emb.encode([]).shape == (0, DIM)
    out = emb.encode(["", TEXTS[0], ""])  # the real API refuses "" with a 400
    assert not out[0].any() and not out[2].any()
    np.testing.assert_allclose(out[1], expected([TEXTS[0]])[0], atol=1e-6)
    assert [n for _, n in server.requests] == [1]
    with pytest.raises(BadInput):
        emb.encode("a bare string")


def test_trailing_slash_and_key_header(server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    server.require_key = SECRET
    monkeypatch.setenv(KEY_ENV, SECRET)
    emb = HttpEmbedder(base_url=server.url + "/", model="m", dim=DIM, api_key_env=KEY_ENV, **FAST)
    assert emb.encode(TEXTS[:1]).shape == (1, DIM)


# --- retries ----------------------------------------------------------------------------
def test_429_retry_after_pauses_and_warns(server: FakeOpenAI, clock: FakeClock,
                                         caplog: pytest.LogCaptureFixture) -> None:
    server.script("429:1")
    emb = make(server, backoff_max_seconds=5.0)
    t0 = clock()
    with caplog.at_level(logging.WARNING):
        out = emb.encode(TEXTS)
    assert clock() - t0 >= 1.0
    assert server.requests[1][0] - server.requests[0][0] >= 1.0
    assert clock.sleeps == [pytest.approx(1.0, abs=1e-3)]  # the pause alone: no backoff on top
    np.testing.assert_allclose(out, expected(TEXTS), atol=1e-6)
    assert any("rate limited (429), pausing 1.00 s" in m for m in warnings(caplog))
    status = emb.status()
    assert status["rate_limited"] == 1 and status["retries"] == 1 and status["requests"] == 2


def test_429_retry_after_is_capped_and_absent_one_uses_backoff(
    server: FakeOpenAI, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    server.script("429:30", "429")
    emb = make(server)  # backoff_max 0.1 s, initial 0.01 s
    t0 = clock()
    with caplog.at_level(logging.WARNING):
        np.testing.assert_allclose(emb.encode(TEXTS), expected(TEXTS), atol=1e-6)
    pauses = [float(m) for m in re.findall(r"pausing (\d+\.\d+) s", " ".join(warnings(caplog)))]
    assert pauses[0] == 0.1  # Retry-After: 30 capped at backoff_max_seconds
    assert 0.0 <= pauses[1] <= 0.02  # no Retry-After: the backoff of a second attempt (0.01 x 2)
    assert clock.sleeps[0] == pytest.approx(0.1, abs=1e-3)
    assert clock() - t0 < 0.2  # 0.1 + one request spacing, nowhere near 30
    assert emb.status()["rate_limited"] == 2 and len(server.requests) == 3


def test_429_pauses_every_worker(server: FakeOpenAI, clock: FakeClock) -> None:
    """The first worker is held inside its pause (its sleep blocks until released), so the
    test sees the pause from outside and sends a second worker's request into it."""
    server.script("429:1")
    pausing, release = threading.Event(), threading.Event()

    def sleep(seconds: float) -> None:
        if threading.current_thread() is first:
            pausing.set()
            assert release.wait(PATIENCE)
        clock.sleep(seconds)

    emb = make(server, backoff_max_seconds=5.0, sleep=sleep)
    results: list[np.ndarray] = []
    first = threading.Thread(target=lambda: results.append(emb.encode(TEXTS)))
    first.start()
    try:
        assert pausing.wait(PATIENCE), "the first worker never waited after its 429"
        assert emb.status()["backoff_seconds"] == pytest.approx(1.0, abs=1e-3)
        t0 = clock()
        emb.encode(["another worker's batch"])  # a request that never saw the 429 waits too
        assert clock() - t0 >= 1.0
        assert server.requests[1][0] - server.requests[0][0] >= 1.0  # the server saw it wait
    finally:
        release.set()
        first.join(PATIENCE)
    assert len(results) == 1 and len(server.requests) == 3
    np.testing.assert_allclose(results[0], expected(TEXTS), atol=1e-6)


@pytest.mark.parametrize("fault", ["500", "503", "wrong_dim", "wrong_count", "bad_json", "nan",
                                   "dup_index", "drop"])
def test_transient_fault_is_retried_then_succeeds(server: FakeOpenAI, fault: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    server.script(fault)
    emb = make(server)
    with caplog.at_level(logging.WARNING):
        out = emb.encode(TEXTS)
    np.testing.assert_allclose(out, expected(TEXTS), atol=1e-6)
    status = emb.status()
    assert status["requests"] == 2 and status["retries"] == 1
    assert status["last_error"] is not None
    if fault != "drop":
        assert status["server_errors"] == 1
    assert any("retrying in" in m for m in warnings(caplog))
    assert server.texts_embedded == {t: 1 for t in TEXTS}  # the bad replies were not counted


def test_slow_reply_times_out_and_is_sent_again_smaller(server: FakeOpenAI,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    # The first reply never comes (until teardown): only the client's real socket timeout
    # can end that attempt. 2 s: shorter, and a healthy reply on a loaded machine could miss it.
    server.script("hold")
    emb = make(server, timeout_seconds=2.0)
    with caplog.at_level(logging.INFO, logger="roxi.embedder.http"):
        out = emb.encode(TEXTS)
    np.testing.assert_allclose(out, expected(TEXTS), atol=1e-6)
    status = emb.status()
    assert status["transport_errors"] == 1 and status["timeouts"] == 1 and status["retries"] == 1
    assert status["last_error"] == "ReadTimeout after 2 s"
    # Half the timed-out request, then (replies take no time on the fake clock) one more.
    assert [n for _, n in server.requests] == [3, 1, 2] and status["requests"] == 3
    assert server.texts_embedded == {t: 1 for t in TEXTS}
    assert "batch size 8 -> 1 after a timeout (over 0.67 s/text)" in caplog.messages
    assert "concurrency 4 -> 2 after a timeout (over 0.67 s/text)" in caplog.messages
    assert status["batch_size"] == 3 and status["concurrency"] == 2


def test_persistent_bad_replies_raise_never_return_data(server: FakeOpenAI) -> None:
    server.every(1, "wrong_dim")
    emb = make(server, max_retries=3)
    with pytest.raises(EmbedError) as info:
        emb.encode(TEXTS)
    assert not info.value.input_error
    assert "after 4 attempts" in str(info.value) and "dimension 65, expected 64" in str(info.value)
    assert len(server.requests) == 4
    assert emb.status()["bad_replies"] == 4 and emb.status()["failures"] == 1


def test_server_down_raises_after_retries(clock: FakeClock) -> None:
    fake = FakeOpenAI(dim=DIM, clock=clock).start()
    fake.stop()  # nothing listens on the port any more
    emb = make(fake, max_retries=2)
    with pytest.raises(EmbedError, match="after 3 attempts"):
        emb.encode(TEXTS)
    assert emb.status()["transport_errors"] == 3


# --- refusals ---------------------------------------------------------------------------
@pytest.mark.parametrize("status", [400, 413, 422])
def test_refused_input_raises_input_error_at_once(server: FakeOpenAI, status: int) -> None:
    server.script(str(status))
    emb = make(server)
    with pytest.raises(EmbedError) as info:
        emb.encode(TEXTS)
    assert info.value.input_error
    assert f"HTTP {status}" in str(info.value) and "scripted fault" in str(info.value)
    assert len(server.requests) == 1
    figures = emb.status()
    assert figures["failures"] == 1 and figures["retries"] == 0
    assert figures["last_error"] == str(info.value)


def test_marked_input_fails_every_time(server: FakeOpenAI) -> None:
    server.fail_inputs_containing("POISON", status=400)
    emb = make(server)
    with pytest.raises(EmbedError) as info:
        emb.encode(["fine", "a POISON chunk"])
    assert info.value.input_error
    assert emb.encode(["fine"]).shape == (1, DIM)
    server.heal()
    assert emb.encode(["a POISON chunk"]).shape == (1, DIM)


def test_server_message_is_truncated() -> None:
    message = server_message(b'{"error": {"message": "' + b"x" * 1000 + b'"}}', lambda text: text)
    assert len(message) == 200
    assert server_message(b'{"error": "sk-1 is wrong"}', lambda text: text.replace("sk-1", "[R]")) == \
        "[R] is wrong"


def test_refused_key_raises_without_retry_and_logs_error_once(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server.require_key = SECRET
    monkeypatch.setenv(KEY_ENV, WRONG_SECRET)
    emb = make(server)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            with pytest.raises(EmbedError) as info:
                emb.encode(TEXTS)
            assert not info.value.input_error and "HTTP 401" in str(info.value)
    assert len(server.requests) == 2  # one per call: no retry
    assert sum(r.levelno == logging.ERROR for r in caplog.records) == 1


# --- concurrency and rate ---------------------------------------------------------------
def test_concurrent_callers_respect_the_rate_limit(server: FakeOpenAI) -> None:
    """4 threads x 12 batches at 1200 rpm: all results right, and the server never sees
    more than 20 requests in a second although it could serve far more (on virtual time,
    so the server sees the spacing the limiter made, without a loaded machine's jitter)."""
    shared = SharedClock(workers=4)
    server.clock = shared
    emb = make(server, requests_per_minute=1200, max_in_flight=4)
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            for b in range(12):
                results[w, b] = emb.encode([f"worker {w} batch {b} text {i}" for i in range(3)])
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)
        finally:
            shared.done()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(PATIENCE)
    assert not errors and len(results) == 48
    for (w, b), out in results.items():
        np.testing.assert_allclose(out, expected([f"worker {w} batch {b} text {i}" for i in range(3)]),
                                   atol=1e-6)
    assert len(server.requests) == 48
    assert server.max_in_window(1.0) <= 20 and server.max_in_window(2.0) <= 40
    assert server.max_in_window(60.0) <= 1200
    assert shared.now - 1000.0 >= 47 * 60 / 1200  # spaced, not merely counted
    assert sum(server.texts_embedded.values()) == 144 and set(server.texts_embedded.values()) == {1}


# --- the key never leaks ----------------------------------------------------------------
def test_api_key_never_appears_in_errors_logs_or_status(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server.require_key = SECRET
    monkeypatch.setenv(KEY_ENV, SECRET)
    # (a 1 s timeout for the "slow:2" fault: healthy replies come far sooner, even on a busy box)
    emb = make(server, max_retries=1, timeout_seconds=1.0)
    messages: list[str] = []
    faults = ["429", "500", "503", "wrong_dim", "wrong_count", "bad_json", "nan", "drop", "slow:2",
              "400", "413", "422", "401", "403", "404"]
    with caplog.at_level(logging.DEBUG):
        for fault in faults:
            server.script(fault, fault)
            try:
                emb.encode(TEXTS)
            except EmbedError as exc:
                messages += [str(exc), repr(exc)]
            server.heal()
        # A server that echoes a wrong key back (as the real API does, partly).
        monkeypatch.setenv(KEY_ENV, WRONG_SECRET)
        emb.unload()
        emb.load()
        with pytest.raises(EmbedError) as info:
            emb.encode(TEXTS)
        messages += [str(info.value), repr(info.value)]
        assert "Incorrect API key provided: [REDACTED]" in str(info.value)
    messages += [r.getMessage() for r in caplog.records]
    messages += [str(emb.status()), repr(emb)]
    assert len(messages) > 30
    for text in messages:
        assert SECRET not in text and WRONG_SECRET not in text


def test_key_unfit_for_a_header_is_refused_without_showing_it(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET + "\u00e9")
    with pytest.raises(ConfigError) as info:
        make(server).load()
    assert KEY_ENV in str(info.value) and SECRET not in str(info.value)
    monkeypatch.setenv(KEY_ENV, f"  {SECRET}\n")  # a key file's newline is only stripped
    server.require_key = SECRET
    assert make(server).encode(TEXTS).shape == (3, DIM)


# --- resources and configuration --------------------------------------------------------
def test_unload_and_load(server: FakeOpenAI) -> None:
    emb = make(server)
    assert not emb.loaded
    emb.encode(TEXTS)  # loads lazily
    assert emb.loaded
    emb.unload()
    assert not emb.loaded
    emb.unload()  # twice is harmless
    emb.load()
    assert emb.loaded
    np.testing.assert_allclose(emb.encode(TEXTS), expected(TEXTS), atol=1e-6)
    emb.unload()


def test_unload_does_not_cut_a_request_in_flight(server: FakeOpenAI) -> None:
    server.script("hold")  # answered only once the test has unloaded
    emb = make(server, timeout_seconds=PATIENCE)
    emb.load()
    out: list[np.ndarray] = []
    t = threading.Thread(target=lambda: out.append(emb.encode(TEXTS)))
    t.start()
    try:
        wait_until(lambda: server.requests, timeout=PATIENCE, what="the request at the server")
        emb.unload()
        assert t.is_alive() and not out  # the request is still in flight
    finally:
        server.release()
        t.join(PATIENCE)
    assert len(out) == 1 and emb.status()["retries"] == 0 and emb.status()["requests"] == 1
    np.testing.assert_allclose(out[0], expected(TEXTS), atol=1e-6)


@pytest.mark.parametrize("kwargs", [
    {"base_url": "ftp://example.org/v1"}, {"base_url": "example.org"}, {"model": ""},
    {"dim": 0}, {"dim": 1.5}, {"dim": True}, {"requests_per_minute": 0}, {"tokens_per_minute": -1},
    {"requests_per_minute": float("nan")}, {"max_in_flight": 0}, {"max_in_flight": 65},
    {"timeout_seconds": 0}, {"max_wait_seconds": 0}, {"backoff_initial_seconds": 0},
    {"backoff_max_seconds": 0.001}, {"max_retries": -1}, {"api_key_env": ""},
])
def test_bad_configuration_is_refused(kwargs: dict) -> None:
    options = {"base_url": "http://127.0.0.1:9/v1", "model": "m", "dim": DIM, **kwargs}
    with pytest.raises(ConfigError):
        HttpEmbedder(**options)


def test_retry_after_forms() -> None:
    assert retry_after_seconds(httpx.Headers({"Retry-After": "2"})) == 2.0
    assert retry_after_seconds(httpx.Headers({"retry-after-ms": "250", "Retry-After": "1"})) == 0.25
    date = httpx.Headers({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"})
    assert retry_after_seconds(date, wall_now=1445412480.0) == pytest.approx(10.0)
    assert retry_after_seconds(date, wall_now=1445412500.0) == 0.0  # already past
    assert retry_after_seconds(httpx.Headers({"Retry-After": "soon"})) is None
    assert retry_after_seconds(httpx.Headers({})) is None


def test_token_estimate() -> None:
    assert estimate_tokens(["", "abc", "abcd" * 10]) == 1 + 1 + 11


def test_fake_server_models_a_slow_cpu_server():
    """The fake's slow mode, which issue 16's tests rely on: time per text, one at a time."""
    import time

    with FakeOpenAI(dim=DIM, seconds_per_text=0.05, concurrency=1) as fake:
        took: list[float] = []

        def post(n: int) -> None:
            started = time.monotonic()
            r = httpx.post(f"{fake.url}/embeddings", json={"model": "m", "input": ["x"] * n}, timeout=30)
            assert r.status_code == 200 and len(r.json()["data"]) == n
            took.append(time.monotonic() - started)

        post(4)
        assert took[0] >= 0.2  # 4 texts x 0.05 s
        threads = [threading.Thread(target=post, args=(4,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert max(took[1:]) >= 0.4  # the second waited for the first: one at a time


def test_the_processes_share_the_configured_rate_limits(make_config) -> None:
    # Each process holds its own buckets, while the limits are the service's: the query
    # server and the embedders together must stay within them (they used to take them each).
    from roxi_mp.embedders import make_embedder, rate_share
    from roxi_mp.embedders.http import RATE_HEADROOM
    cfg = make_config(embedder__backend="http", embedder__count=3, http__base_url="http://127.0.0.1:9/v1",
                      http__model="m", http__dim=8, http__requests_per_minute=1200.0,
                      http__tokens_per_minute=60_000.0, http__query_share=0.25)
    assert rate_share(cfg, "query") == 0.25 and rate_share(cfg, "embedder") == pytest.approx(0.25)
    query = make_embedder(cfg, share=rate_share(cfg, "query"))._limiter
    embedders = [make_embedder(cfg, share=rate_share(cfg, "embedder"))._limiter for _ in range(3)]
    for limit, configured in (("requests_per_minute", 1200.0), ("tokens_per_minute", 60_000.0)):
        used = getattr(query, limit) + sum(getattr(e, limit) for e in embedders)
        assert used == pytest.approx(configured * RATE_HEADROOM)
    assert make_embedder(cfg)._limiter.requests_per_minute == pytest.approx(1200.0 * RATE_HEADROOM)  # reembed: alone
    with pytest.raises(ValueError):
        rate_share(cfg, "indexer")


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1, 1.5])
def test_a_query_share_outside_0_1_is_refused(make_config, share: float) -> None:
    with pytest.raises(ConfigError, match="http.query_share"):
        make_config(http__query_share=share)
