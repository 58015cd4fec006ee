"""The real system embedding with MiniLM on every core, a query narrowing it, and kill -9
while two batches are in flight (issue 21)."""

from __future__ import annotations

import os
import signal

import pytest

from roxi_mp.service import READY_STATES

from ..conftest import PATIENCE
from ..corpus import check_exactly_once, write_corpus
from .test_pipeline import roxi

pytestmark = pytest.mark.integration


def embedder(s) -> dict:
    return next(r for r in s.status()["roles"] if r["role"] == "embedder")


def test_two_batches_at_once_a_query_narrows_it_and_kill_9_loses_nothing(system, make_config, tmp_path):
    # Two workers whatever the machine, and "idle" unless it is saturated: pytest and other
    # sessions load this one, and the point here is what happens with two batches out.
    cfg = make_config(embedder__backend="minilm", embedder__idle_workers=2, embedder__idle_cpu_percent=100.0,
                      embedder__batch_size=4, embedder__yield_batch_size=2, embedder__lease_seconds=3.0,
                      embedder__yield_seconds=2.0)
    write_corpus(tmp_path / "docs", docs=90, words=600)  # ~360 chunks; 120-180 were indexed by the checks
    s = system(cfg)
    assert roxi(cfg, "ingest", str(tmp_path / "docs")).returncode == 0
    total = s.stats().chunks
    two_out = lambda: embedder(s)["concurrency"]["mode"] == "all" and embedder(s)["in_flight"] > 4  # noqa: E731
    s.wait_for(two_out, timeout=PATIENCE, what="two batches in flight")
    row = embedder(s)
    assert row["backend"]["compute"] == "int8" and row["backend"]["parallel"] == 2
    victim = row["pid"]
    os.kill(victim, signal.SIGKILL)  # two batches' leases lapse; their chunks are embedded again
    s.wait_for(lambda: embedder(s)["state"] in READY_STATES and embedder(s)["pid"] != victim,
               timeout=PATIENCE, what="embedder restarted")

    s.wait_for(two_out, timeout=PATIENCE, what="two batches in flight again")
    assert "embedding 2 batches at once (every core: nobody is querying), int8 compute" in roxi(cfg, "status").stdout
    with s.query_client() as client:  # a query: the supervisor relays it, the embedder narrows at once
        client.query("inflammation of the joints", k=3)
    s.wait_for(lambda: embedder(s)["concurrency"]["mode"] == "one", timeout=PATIENCE, what="one at a time")
    assert embedder(s)["backend"]["parallel"] == 1
    assert s.stats().indexed < total, "ingest finished before the checks; make the corpus larger"
    s.wait_indexed(total, timeout=PATIENCE * 3)
    assert check_exactly_once(cfg) == total
