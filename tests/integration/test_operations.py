"""Operations with real processes (issue 6): progress targets, watch, pause and resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from roxi_mp import errors

from ..conftest import PATIENCE, clean_env, wait_until
from ..corpus import check_exactly_once, write_corpus
from .test_pipeline import roxi

pytestmark = pytest.mark.integration


@pytest.fixture
def docs() -> int:
    """Documents `slow_ingest` writes, ~20 chunks each; a test that only needs some work
    behind a pause parametrizes fewer (20 documents: ~400 chunks, ~4 s of ingest)."""
    return 50


@pytest.fixture
def slow_ingest(system, make_config, tmp_path, docs):
    """A running system ingesting ~20 chunks per doc (~1000) at ~100 chunks/s, so targets can be watched."""
    cfg = make_config(embedder__batch_size=8, embedder__yield_batch_size=8, embedder__pause_seconds=0.08,
                      store__chunk_words=40, store__chunk_overlap=5)
    write_corpus(tmp_path / "docs", docs=docs, words=700)
    s = system(cfg)
    assert roxi(cfg, "pause").returncode == 0  # start paused: the test decides when it runs
    assert roxi(cfg, "ingest", str(tmp_path / "docs")).returncode == 0
    return cfg, s


#: a `python -m roxi_mp.cli` that appends the percent of each of its store readings to the
#: file named by its first argument: what `roxi watch` saw, in its own time
SPY = """
import sys
from pathlib import Path
from roxi_mp import cli, service
readings, real = Path(sys.argv.pop(1)), service.store_stats
def store_stats(cfg):
    stats = real(cfg)
    with readings.open("a") as out:
        out.write(f"{stats['percent']}\\n")
    return stats
service.store_stats = store_stats
cli.main(prog_name="roxi")
"""


def embedder_beats(s, after: int | None = None) -> dict:
    """The embedder's status row; with `after`, once a heartbeat later than that seq arrived."""
    if after is None:
        return s.role("embedder-1")
    s.wait_for(lambda: s.role("embedder-1").get("seq", 0) > after, timeout=PATIENCE,
               what=f"an embedder heartbeat after #{after}")
    return s.role("embedder-1")


def settled(s) -> int:
    """The indexed count once a pause has taken hold: the embedder said so in a heartbeat sent
    after the pause was set (heartbeats go out between turns of its loop, so every later
    claim sees the pause), and what it had claimed before has committed (nothing leased).
    States to wait for, where a quiet second would not do: a loaded machine can take longer
    than that over a batch in flight."""
    row = embedder_beats(s)  # read after the pause was set: the next heartbeats follow it
    row = embedder_beats(s, after=row.get("seq", 0))
    while not row.get("paused"):
        row = embedder_beats(s, after=row["seq"])
    s.wait_for(lambda: s.stats().leased == 0, timeout=PATIENCE, what="the batches in flight committed")
    return s.stats().indexed


def still_paused(s, frozen: int, *, beats: int = 3) -> bool:
    """Nothing claimed or indexed while the embedder went round its loop for `beats` more
    heartbeats (a second each, every turn a chance to claim): its own time, not the test's."""
    row = embedder_beats(s)
    first = row.get("seq", 0)
    while row.get("seq", 0) < first + beats:
        row = embedder_beats(s, after=row.get("seq", 0))
        assert row.get("paused") is True, row
    stats = s.stats()
    return stats.indexed == frozen and stats.leased == 0


def percent(cfg) -> float:
    return json.loads(roxi(cfg, "progress", "--json").stdout)["percent"]


def test_process_until_50_stops_between_50_and_100(slow_ingest):
    cfg, s = slow_ingest
    assert s.stats().chunks >= 900
    result = roxi(cfg, "process", "--until", "50", timeout=2 * PATIENCE)
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
    readings = tmp_path / "readings"  # the watcher's own readings of the store (SPY)

    def percents() -> list[float]:
        return [float(line) for line in readings.read_text().split()] if readings.exists() else []

    watcher = subprocess.Popen(
        [sys.executable, "-c", SPY, str(readings), *cfg.to_argv(), "watch", "--notify-at", "50", "--interval", "0.1",
         "--exec", f"touch {marker} && echo $ROXI_PERCENT > {seen}"],
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # paused at 0 %: the watcher reads the store a few times and does nothing
    wait_until(lambda: len(percents()) >= 3 or watcher.poll() is not None, timeout=PATIENCE,
               what="the watcher's first readings")
    assert not marker.exists() and watcher.poll() is None
    assert roxi(cfg, "resume").returncode == 0
    assert watcher.wait(timeout=2 * PATIENCE) == 0, watcher.stderr.read()
    assert marker.exists() and float(seen.read_text()) == pytest.approx(percents()[-1], abs=0.005)
    # It ran the command at its first reading at or past 50 %: not before, and not later,
    # whatever the pace of a loaded machine (the test's own polling of the percentage
    # would race with the watcher and its shell command).
    *before, fired = percents()
    assert fired >= 50.0 and before and all(p < 50.0 for p in before), percents()
    assert "reached" in watcher.stdout.read()


@pytest.mark.parametrize("docs", [20])
def test_pause_survives_a_supervisor_restart_and_resume_finishes_exactly_once(slow_ingest):
    cfg, s = slow_ingest
    assert roxi(cfg, "resume").returncode == 0
    s.wait_for(lambda: s.stats().indexed > 100, timeout=PATIENCE, what="some progress")
    assert roxi(cfg, "pause").returncode == 0
    frozen = settled(s)  # what was in flight commits, then nothing more
    assert still_paused(s, frozen), "chunks were claimed or indexed while paused"
    with s.query_client() as client:  # queries keep working while paused
        assert client.query("synovial joint", k=3)
    assert s.stop() == 0
    s.start()
    assert still_paused(s, frozen), "a restart undid the pause"
    assert "PAUSED" in roxi(cfg, "status").stdout
    assert roxi(cfg, "resume").returncode == 0
    total = s.stats().chunks
    s.wait_indexed(total, timeout=2 * PATIENCE)
    assert check_exactly_once(cfg) == total


def test_process_refuses_when_not_running_or_empty(make_config, system):
    cfg = make_config()
    result = roxi(cfg, "process", "--until", "50")
    assert result.returncode == errors.NOT_RUNNING
    system(cfg)
    empty = roxi(cfg, "process", "--until", "50")
    assert empty.returncode == errors.BAD_INPUT and "no chunks" in empty.stderr
    assert roxi(cfg, "process", "--until", "0").returncode == errors.USAGE


@pytest.mark.parametrize("docs", [20])
def test_process_ctrl_c_pauses_and_leaves_the_store_consistent(slow_ingest):
    cfg, s = slow_ingest
    # SIG_DFL in the child: a test run started in the background by a non-interactive
    # shell inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-m", "roxi_mp.cli", *cfg.to_argv(), "process", "--until", "100"],
                            env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    s.wait_for(lambda: s.stats().indexed > 50, timeout=PATIENCE, what="processing")
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=PATIENCE)
    out, err = proc.stdout.read(), proc.stderr.read()
    assert code == 130, f"exit {code}; stats {s.stats()}; stdout {out!r}; stderr {err!r}"
    assert "processing paused" in err
    frozen = settled(s)
    assert still_paused(s, frozen) and frozen < s.stats().chunks
    assert roxi(cfg, "resume").returncode == 0
    s.wait_indexed(s.stats().chunks, timeout=2 * PATIENCE)
    assert check_exactly_once(cfg) == s.stats().chunks
