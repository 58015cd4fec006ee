"""Text queries against a slow, busy embedding service (issue 16, acceptance 3).

The fake OpenAI server computes one request at a time at 0.5 s per text, like a small CPU
server, and the embedder role keeps it busy with ingest. Text queries then wait for the
service; before issue 16 the query server waited inline, stopped heartbeating and was
killed as hung, and every other client waited with it. `run_scenario` is shared with
tests/bench/bench_query_embed.py, which prints the p50/p99 figures this test only bounds.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from roxi_mp.client import QueryClient
from roxi_mp.embedders import HashingEmbedder
from roxi_mp.errors import ServerError

from ..corpus import write_corpus
from ..fake_openai import FakeOpenAI
from .test_pipeline import roxi

pytestmark = pytest.mark.integration

DIM = 64
#: query.embed_timeout_seconds in this test
DEADLINE = 3.0
#: seconds past the deadline a reply may take on a loaded 2-core machine
MARGIN = 4.0
#: text queries sent, and the client threads sending them
TEXT_QUERIES, TEXT_THREADS = 20, 2


def slow_service_settings(fake: FakeOpenAI) -> dict:
    """The http backend against `fake`: no request cut short by the client (a slow service
    is waited for), small ingest batches (2 texts: 1 s of the fake's time each)."""
    return dict(embedder__backend="http", http__base_url=fake.url, http__model="fake-embed", http__dim=DIM,
                http__max_in_flight=2, http__timeout_seconds=60.0, http__max_retries=2,
                http__backoff_initial_seconds=0.05, http__backoff_max_seconds=0.5,
                embedder__batch_size=2, embedder__yield_batch_size=1, embedder__lease_seconds=120.0,
                query__embed_timeout_seconds=DEADLINE, query__idle_seconds=3600.0)


def vector_latencies(cfg, stop: threading.Event | None, *, count: int = 0, pause: float = 0.02) -> list[float]:
    """Seconds per vector query: `count` of them, or until `stop` is set."""
    model = HashingEmbedder(dim=DIM)
    out: list[float] = []
    with QueryClient.for_config(cfg, timeout=30.0) as client:
        i = 0
        while (stop is None and i < count) or (stop is not None and not stop.is_set()):
            vector = model.encode([f"vector query {i} about urate crystals"])[0]
            started = time.perf_counter()
            client.query_vector(vector, k=5, with_text=False)
            out.append(time.perf_counter() - started)
            i += 1
            time.sleep(pause)
    return out


def text_queries(cfg, first: int, count: int, results: list) -> None:
    """Send `count` distinct text queries; append (seconds, "hits" | error code, hit count)."""
    with QueryClient.for_config(cfg, timeout=DEADLINE + 30.0) as client:
        for i in range(first, first + count):
            started = time.perf_counter()
            try:
                hits = client.query(f"text query {i}: crystals in a swollen joint", k=3)
                results.append((time.perf_counter() - started, "hits", len(hits)))
            except ServerError as exc:
                results.append((time.perf_counter() - started, exc.code, 0))


def run_scenario(s, tmp_path, *, texts: int = TEXT_QUERIES, threads: int = TEXT_THREADS,
                 baseline: int = 60) -> dict:
    """Ingest into the slow fake, then measure vector queries alone and vector queries
    while `texts` text queries run; returns latencies, outcomes and the query role's row."""
    write_corpus(tmp_path / "docs", docs=40, words=600)
    assert roxi(s.cfg, "ingest", str(tmp_path / "docs")).returncode == 0
    s.wait_indexed(4, timeout=120)  # something to find; the rest keeps the fake busy
    vector_latencies(s.cfg, None, count=3)  # wakes the query server
    before = s.role("query")
    alone = vector_latencies(s.cfg, None, count=baseline)
    results: list = []
    stop = threading.Event()
    during: list[float] = []
    prober = threading.Thread(target=lambda: during.extend(vector_latencies(s.cfg, stop)))
    prober.start()
    senders = [threading.Thread(target=text_queries, args=(s.cfg, t * texts // threads, texts // threads, results))
               for t in range(threads)]
    try:
        for t in senders:
            t.start()
        for t in senders:
            t.join(timeout=texts * (DEADLINE + MARGIN))
    finally:
        stop.set()
        prober.join(timeout=60)
    return {"before": before, "after": s.role("query"), "alone": alone, "during": during, "texts": results,
            "busy": s.stats().indexed < s.stats().chunks}


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def test_text_queries_against_a_busy_slow_service_never_stall_the_query_server(system, make_config, tmp_path):
    with FakeOpenAI(dim=DIM, seconds_per_text=0.5, concurrency=1) as fake:
        s = system(make_config(**slow_service_settings(fake)))
        out = run_scenario(s, tmp_path)
    texts = out["texts"]
    assert len(texts) == TEXT_QUERIES, texts
    assert out["busy"], "the ingest ended early: the fake was not kept busy"
    codes = {code for _, code, _ in texts}
    assert codes <= {"hits", "embed_timeout"}, texts
    assert any(code == "hits" and n > 0 for _, code, n in texts), texts  # the slow service does answer
    slowest = max(seconds for seconds, _, _ in texts)
    assert slowest <= DEADLINE + MARGIN, texts
    # Never taken for hung: the same process all along, no restart.
    assert (out["after"]["pid"], out["after"]["restarts"]) == (out["before"]["pid"], out["before"]["restarts"])
    # Vector queries kept their pace (inline embedding made them wait seconds behind a text query).
    alone, during = out["alone"], out["during"]
    assert len(during) >= 10
    assert p(during, 50) <= max(10 * p(alone, 50), 0.25), (p(alone, 50), p(during, 50))
    assert p(during, 99) <= max(20 * p(alone, 99), 1.5), (p(alone, 99), p(during, 99))
