"""HttpEmbedder's request sizing against the fake server made slow on a fake clock (issue 16).

The fake spends `seconds_per_text` per text on the shared FakeClock (`sleep=clock.sleep`),
one request at a time, as a CPU server does; the client reads its timeout on the same
clock. So a 24-second request times out in no real time, and every size below is exact.
Timeout 10 s and target 0.5: a request should take at most 5 s.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest

from roxi_mp.cli_format import print_roles
from roxi_mp.embedders import http
from roxi_mp.embedders.base import EmbedError
from roxi_mp.embedders.hashing import HashingEmbedder
from roxi_mp.embedders.http import HttpEmbedder
from tests.conftest import FakeClock
from tests.fake_openai import FakeOpenAI

DIM = 64
TEXTS = [f"text number {i} about joints" for i in range(64)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(clock: FakeClock) -> Iterator[FakeOpenAI]:
    with FakeOpenAI(dim=DIM, clock=clock, sleep=clock.sleep, concurrency=1) as fake:
        yield fake


def make(server: FakeOpenAI, **kwargs) -> HttpEmbedder:
    options = {"timeout_seconds": 10.0, "backoff_initial_seconds": 0.01, "backoff_max_seconds": 0.1,
               "max_retries": 2, "api_key_env": "ROXI_TEST_NO_KEY", "clock": server.clock,
               "sleep": server.clock.sleep, **kwargs}
    return HttpEmbedder(base_url=server.url, model="slow-cpu", dim=DIM, **options)


def sizes(server: FakeOpenAI) -> list[int]:
    return [n for _, n in server.requests]


def check(out: np.ndarray, texts: list[str]) -> None:
    np.testing.assert_allclose(out, HashingEmbedder(dim=DIM).encode(texts), atol=1e-6)


def test_slow_replies_shrink_requests_before_any_timeout(server, caplog) -> None:
    server.seconds_per_text = 1.0
    emb = make(server)
    with caplog.at_level(logging.INFO, logger="roxi.embedder.http"):
        check(emb.encode(TEXTS[:16]), TEXTS[:16])
    # 8 texts took 8 s (> 5 s): 5 fit. Then 5 s (not slow) and the 3 left.
    assert sizes(server) == [8, 5, 3]
    assert "batch size 8 -> 5 after a slow reply (8.0 s for 8 texts, 1.00 s/text)" in caplog.messages
    status = emb.status()
    assert status["timeouts"] == 0 and status["retries"] == 0 and status["batch_size"] == 5
    assert status["concurrency"] == 2 and status["seconds_per_text"] == pytest.approx(1.0)
    assert set(server.texts_embedded.values()) == {1}  # no work thrown away

    server.seconds_per_text = 0.01  # the service speeds up: the sizes grow back, one at a time
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="roxi.embedder.http"):
        check(emb.encode(TEXTS[16:56]), TEXTS[16:56])
    assert sizes(server)[3:] == [5, 6, 7, 8, 9, 5]
    assert "batch size 5 -> 6 (replies fast, 0.01 s/text)" in caplog.messages
    assert "concurrency 2 -> 3 (replies fast, 0.01 s/text)" in caplog.messages  # the last call had no more
    assert emb.status()["batch_size"] == 10


def test_a_timeout_sends_the_texts_again_smaller_without_using_an_attempt(server, caplog) -> None:
    server.seconds_per_text = 3.0
    emb = make(server, max_retries=0)  # a counted failure would raise at once
    with caplog.at_level(logging.INFO, logger="roxi.embedder.http"):
        check(emb.encode(TEXTS[:8]), TEXTS[:8])
    # 8 x 3 s and 4 x 3 s time out; 2 x 3 s = 6 s comes (slow: 1 text fits 5 s); then singles.
    assert sizes(server) == [8, 4, 2, 1, 1, 1, 1, 1, 1]
    status = emb.status()
    assert status["timeouts"] == 2 and status["retries"] == 2 and status["failures"] == 0
    assert status["batch_size"] == 1 and status["concurrency"] == 1 and emb._gate.limit == 1
    assert "batch size 8 -> 4 after a timeout (over 1.25 s/text)" in caplog.messages
    assert "concurrency 4 -> 2 after a timeout (over 1.25 s/text)" in caplog.messages
    assert "concurrency 2 -> 1 after a timeout (over 2.50 s/text)" in caplog.messages
    # Each timeout pauses every caller (capped by backoff_max_seconds, 0.1 s here) while the
    # server finishes the request it was abandoned with.
    assert "a request of 8 texts timed out (reply not complete after 10 s): sending them again in smaller " \
           "requests; nothing is sent for 0.1 s while the service finishes it" in caplog.messages
    assert server.requests[1][0] - server.requests[0][0] == pytest.approx(24.0 + 0.1)


def test_single_texts_timing_out_one_at_a_time_use_attempts_then_fail(server) -> None:
    server.seconds_per_text = 20.0
    emb = make(server, max_in_flight=2, initial_batch_size=4)
    with pytest.raises(EmbedError, match="after 3 attempts") as info:
        emb.encode(TEXTS[:4])
    assert not info.value.input_error  # the service's failure: the role's outage path
    assert sizes(server) == [4, 2, 1, 1, 1]
    status = emb.status()
    assert status["timeouts"] == 5 and status["failures"] == 1 and status["retries"] == 4


def test_free_timeouts_are_bounded(server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "FREE_TIMEOUTS", 1)
    server.seconds_per_text = 20.0
    emb = make(server)
    with pytest.raises(EmbedError, match="after 3 attempts"):
        emb.encode(TEXTS[:8])
    assert sizes(server) == [8, 4, 4, 4]  # the second timeout is no longer free: attempts, same size


def test_role_status_shows_the_sizing(server, capsys) -> None:
    server.seconds_per_text = 1.0
    emb = make(server)
    emb.encode(TEXTS[:16])
    row = {"name": "embedder-1", "state": "running", "pid": 42, "restarts": 0, "backend": emb.status()}
    print_roles({"roles": [row]})
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].strip().startswith("requests of 5 texts, 2 at once, 1.00 s/text,")
    assert lines[1].endswith("texts/s, 0 timeouts")
