"""Operations with real processes (issue 6): progress targets, watch, pause and resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from roxi_mp import errors

from ..conftest import clean_env
from ..corpus import check_exactly_once, write_corpus
from .test_pipeline import roxi

pytestmark = pytest.mark.integration


@pytest.fixture
def slow_ingest(system, make_config, tmp_path):
    """A running system ingesting ~1000 chunks at ~100 chunks/s, so targets can be watched."""
    cfg = make_config(embedder__batch_size=8, embedder__yield_batch_size=8, embedder__pause_seconds=0.08,
                      store__chunk_words=40, store__chunk_overlap=5)
    write_corpus(tmp_path / "docs", docs=50, words=700)
    s = system(cfg)
    assert roxi(cfg, "pause").returncode == 0  # start paused: the test decides when it runs
    assert roxi(cfg, "ingest", str(tmp_path / "docs")).returncode == 0
    return cfg, s


def settled(s, *, quiet: float = 1.0, timeout: float = 10.0) -> int:
    """The indexed count once batches in flight at a pause have committed (unchanged for `quiet` s)."""
    deadline = time.monotonic() + timeout
    last, since = s.stats().indexed, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = s.stats().indexed
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return last
    raise AssertionError(f"indexing did not stop within {timeout} s of the pause")


def percent(cfg) -> float:
    return json.loads(roxi(cfg, "progress", "--json").stdout)["percent"]


def test_process_until_50_stops_between_50_and_100(slow_ingest):
    cfg, s = slow_ingest
    assert s.stats().chunks >= 900
    result = roxi(cfg, "process", "--until", "50", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "processing paused" in result.stdout
    settled(s)  # batches in flight at the pause commit; nothing more follows
    reached = percent(cfg)
    assert 50.0 <= reached < 100.0
    assert percent(cfg) == reached
    assert roxi(cfg, "progress", "--target", "50").returncode == 0
    assert roxi(cfg, "progress", "--target", "90").returncode == errors.TARGET_NOT_REACHED
    progress = json.loads(roxi(cfg, "progress", "--json").stdout)
    assert progress["paused"] is True and progress["rate_per_second"] > 0
    assert "ETA" in roxi(cfg, "progress").stdout or "no ETA" in roxi(cfg, "progress").stdout


def test_watch_runs_its_command_when_50_percent_is_crossed_not_before(slow_ingest, tmp_path):
    cfg, s = slow_ingest
    marker = tmp_path / "marker"
    seen = tmp_path / "seen"
    watcher = subprocess.Popen(
        [sys.executable, "-m", "roxi_mp.cli", *cfg.to_argv(), "watch", "--notify-at", "50", "--interval", "0.1",
         "--exec", f"touch {marker} && echo $ROXI_PERCENT > {seen}"],
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert not marker.exists() and watcher.poll() is None  # paused at 0 %: nothing yet
    assert roxi(cfg, "resume").returncode == 0
    low = None
    while watcher.poll() is None:
        p = percent(cfg)
        if not marker.exists():
            low = p  # the last percentage seen while the marker was still absent
        time.sleep(0.05)
    assert watcher.returncode == 0, watcher.stderr.read()
    assert marker.exists() and float(seen.read_text()) >= 50.0
    assert low is not None and low < 50.0 + 5.0  # it fired near the crossing, not at the end
    assert "reached" in watcher.stdout.read()


def test_pause_survives_a_supervisor_restart_and_resume_finishes_exactly_once(slow_ingest):
    cfg, s = slow_ingest
    assert roxi(cfg, "resume").returncode == 0
    s.wait_for(lambda: s.stats().indexed > 100, timeout=30, what="some progress")
    assert roxi(cfg, "pause").returncode == 0
    frozen = settled(s)  # what was in flight commits, then nothing more
    time.sleep(1.5)
    assert s.stats().indexed == frozen, "chunks were indexed while paused"
    with s.query_client() as client:  # queries keep working while paused
        assert client.query("synovial joint", k=3)
    assert s.stop() == 0
    s.start()
    time.sleep(1.5)
    assert s.stats().indexed == frozen, "a restart undid the pause"
    assert "PAUSED" in roxi(cfg, "status").stdout
    assert roxi(cfg, "resume").returncode == 0
    total = s.stats().chunks
    s.wait_indexed(total, timeout=90)
    assert check_exactly_once(cfg) == total


def test_process_refuses_when_not_running_or_empty(make_config, system):
    cfg = make_config()
    result = roxi(cfg, "process", "--until", "50")
    assert result.returncode == errors.NOT_RUNNING
    system(cfg)
    empty = roxi(cfg, "process", "--until", "50")
    assert empty.returncode == errors.BAD_INPUT and "no chunks" in empty.stderr
    assert roxi(cfg, "process", "--until", "0").returncode == errors.USAGE


def test_process_ctrl_c_pauses_and_leaves_the_store_consistent(slow_ingest):
    cfg, s = slow_ingest
    # SIG_DFL in the child: a test run started in the background by a non-interactive
    # shell inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-m", "roxi_mp.cli", *cfg.to_argv(), "process", "--until", "100"],
                            env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    s.wait_for(lambda: s.stats().indexed > 50, timeout=30, what="processing")
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=10)
    out, err = proc.stdout.read(), proc.stderr.read()
    assert code == 130, f"exit {code}; stats {s.stats()}; stdout {out!r}; stderr {err!r}"
    assert "processing paused" in err
    frozen = settled(s)
    time.sleep(1.0)
    assert s.stats().indexed == frozen < s.stats().chunks
    assert roxi(cfg, "resume").returncode == 0
    s.wait_indexed(s.stats().chunks, timeout=90)
    assert check_exactly_once(cfg) == s.stats().chunks
