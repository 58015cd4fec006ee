"""The supervisor with real processes (issue 3's acceptance): restarts, watchdog, no
orphans, single instance, ordered stop, several embedders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from roxi_mp import errors
from roxi_mp.service import READY_STATES

from ..conftest import clean_env, roxi_processes
from ..corpus import check_exactly_once, write_corpus
from .test_pipeline import roxi

pytestmark = pytest.mark.integration


def wait_state(s, name: str, states: tuple[str, ...], *, timeout: float, new_pid_than: int | None = None):
    s.wait_for(lambda: s.role(name)["state"] in states
               and (new_pid_than is None or s.role(name)["pid"] not in (None, new_pid_than)),
               timeout=timeout, what=f"{name} in {states}")
    return s.role(name)


@pytest.mark.parametrize("name", ["embedder-1", "indexer", "query"])
def test_kill_9_restarts_then_flapping_fails_then_restart_recovers(system, name):
    s = system(restart__backoff_initial_seconds=0.3, restart__flap_count=3,
               restart__flap_window_seconds=60.0)
    victim = s.pid(name)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    row = wait_state(s, name, READY_STATES, timeout=10, new_pid_than=victim)
    assert time.monotonic() - killed_at < 0.3 + 3.0  # the backoff plus a boot
    assert row["restarts"] == 1
    for _ in range(2):  # failures 2 and 3 within the window: flapping
        victim = s.pid(name)
        os.kill(victim, signal.SIGKILL)
        s.wait_for(lambda: s.role(name)["pid"] != victim, timeout=10, what="reaped")
        if s.role(name)["state"] != "failed":
            wait_state(s, name, READY_STATES, timeout=10, new_pid_than=victim)
    row = s.role(name)
    assert row["state"] == "failed" and row["pid"] is None
    assert row["exit_code"] == -signal.SIGKILL
    assert any("ready" in line for line in row["log_tail"])
    time.sleep(1.0)
    assert s.role(name)["state"] == "failed", "a failed role was restarted"
    status = roxi(s.cfg, "status")
    assert "failed" in status.stdout and "exit code -9" in status.stdout
    result = roxi(s.cfg, "restart", name.split("-")[0])
    assert result.returncode == 0, result.stderr
    assert s.role(name)["state"] in READY_STATES


def test_sigstop_is_detected_and_replaced(system):
    liveness, grace = 2.0, 1.0
    s = system(supervisor__heartbeat_seconds=0.5, supervisor__liveness_seconds=liveness,
               supervisor__grace_seconds=grace)
    victim = s.pid("indexer")
    stopped_at = time.monotonic()
    os.kill(victim, signal.SIGSTOP)
    try:
        s.wait_for(lambda: s.role("indexer")["pid"] not in (None, victim), timeout=liveness + grace + 5,
                   what="a replacement indexer")
        took = time.monotonic() - stopped_at
    finally:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert took <= liveness + grace + 1.0, f"replaced after {took:.2f} s"
    wait_state(s, "indexer", READY_STATES, timeout=10)
    assert "silent" in (s.cfg.log_dir / "supervisor.log").read_text()


def test_crash_loop_never_delays_control_or_other_roles(system):
    s = system(restart__backoff_initial_seconds=0.1, restart__backoff_max_seconds=0.1,
               restart__flap_count=1000)
    worst = 0.0
    kills = 0
    deadline = time.monotonic() + 4
    with s.control(timeout=2) as control, s.query_client(timeout=2) as query:
        while time.monotonic() < deadline:
            pid = s.pid("embedder-1")
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
            started = time.perf_counter()
            control.command("ping")
            query.ping()
            worst = max(worst, time.perf_counter() - started)
            time.sleep(0.05)
    assert kills >= 5
    assert worst < 0.5, f"control/query took {worst * 1000:.0f} ms during a crash loop"
    assert s.role("indexer")["restarts"] == 0 and s.role("query")["restarts"] == 0


def test_supervisor_kill_9_leaves_no_orphans_and_restart_resumes(system, make_config, tmp_path):
    cfg = make_config(embedder__batch_size=8, embedder__pause_seconds=0.03)
    write_corpus(tmp_path / "docs", docs=80, words=700)
    s = system(cfg)
    assert roxi(cfg, "ingest", str(tmp_path / "docs")).returncode == 0
    total = s.stats().chunks
    s.wait_for(lambda: s.stats().indexed > 0, timeout=20, what="some progress")
    os.kill(s.proc.pid, signal.SIGKILL)
    s.proc.wait(timeout=5)
    time.sleep(2.0)
    left = roxi_processes(cfg.data_dir)
    assert left == [], f"orphans: {[p.pid for p in left]}"
    indexed_before = s.stats().indexed
    assert indexed_before < total, "ingest finished before the kill; slow it down"
    s.start()  # same data directory: the lock was released with the dead supervisor
    s.wait_indexed(total, timeout=90)
    assert check_exactly_once(cfg) == total


def test_second_supervisor_is_refused(system):
    s = system()
    second = subprocess.run([sys.executable, "-m", "supervisor", *s.cfg.to_argv()], capture_output=True,
                            text=True, timeout=30, env=clean_env())
    assert second.returncode == errors.ALREADY_RUNNING
    assert f"another supervisor (pid {s.proc.pid})" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert s.role("indexer")["state"] in READY_STATES  # the first one is untouched


def test_roxi_stop_is_ordered_within_grace_and_leaves_nothing(system):
    grace = 3.0
    s = system(supervisor__grace_seconds=grace)
    started = time.monotonic()
    result = roxi(s.cfg, "stop")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert took < grace + 1.0
    assert s.proc.wait(timeout=5) == 0
    assert roxi_processes(s.cfg.data_dir) == []
    order = [line.split()[4] for line in (s.cfg.log_dir / "supervisor.log").read_text().splitlines()
             if "-> stopped" in line]
    assert order == ["embedder-1", "indexer", "query"]


def test_manual_stop_stays_stopped_until_restart(system):
    s = system(restart__backoff_initial_seconds=0.1)
    result = roxi(s.cfg, "stop", "embedder")
    assert result.returncode == 0, result.stderr
    time.sleep(1.0)
    row = s.role("embedder-1")
    assert row["state"] == "stopped" and row["pid"] is None
    assert roxi(s.cfg, "stop", "nonsense").returncode == errors.BAD_INPUT
    assert roxi(s.cfg, "restart", "embedder-1").returncode == 0
    assert s.role("embedder-1")["state"] in READY_STATES


def test_status_json_and_logs(system):
    s = system()
    data = json.loads(roxi(s.cfg, "status", "--json").stdout)
    row = next(r for r in data["roles"] if r["name"] == "indexer")
    assert {"state", "pid", "uptime", "restarts", "rss", "cpu_percent", "heartbeat_age"} <= set(row)
    assert row["rss"] > 10 * 2**20 and row["heartbeat_age"] < 3
    logs = roxi(s.cfg, "logs", "indexer", "-n", "5")
    assert logs.returncode == 0 and "indexer ready" in logs.stdout
    assert roxi(s.cfg, "logs", "nobody").returncode == errors.BAD_INPUT


def test_three_embedders_share_5k_chunks_exactly_once(system, make_config, tmp_path):
    cfg = make_config(embedder__count=3, embedder__batch_size=16, store__chunk_words=40,
                      store__chunk_overlap=5)
    write_corpus(tmp_path / "docs", docs=250, words=700)
    s = system(cfg)
    assert roxi(cfg, "ingest", str(tmp_path / "docs")).returncode == 0
    total = s.stats().chunks
    assert total >= 5000
    s.wait_indexed(total, timeout=120)
    assert check_exactly_once(cfg) == total
    def embedded() -> dict:
        return {r["name"]: r.get("embedded", 0) for r in s.status()["roles"] if r["role"] == "embedder"}

    # counters travel with heartbeats (one a second): wait for the last ones
    s.wait_for(lambda: sum(embedded().values()) >= total, timeout=5, what="heartbeats with the counts")
    counts = embedded()
    assert len(counts) == 3 and all(n > 0 for n in counts.values()), counts
