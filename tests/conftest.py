"""Shared fixtures: a test configuration factory and a real running system.

`make_config(tmp_path, section__key=value, ...)` builds a Config for a temporary data
directory without reading conf/roxi.toml or the caller's ROXI_* environment, so a test sees
only the values it sets. `System` starts the real supervisor (`python -m supervisor`) as a
subprocess with such a configuration written to a TOML file, so its children load exactly
the same values. `FakeClock` is the injected clock of unit tests; `wait_until` is how a test
waits for a state of real processes (a generous deadline, PATIENCE, never a fixed sleep);
`log_records` reads the times a process noted in its own log, for tests that check a delay
the supervisor itself took rather than the test's wall time (which a loaded machine stretches).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import psutil
import pytest

from roxi_mp import config as config_mod
from roxi_mp.client import ControlClient, QueryClient
from roxi_mp.errors import RoxiError
from roxi_mp.service import READY_STATES
from roxi_mp.store import Store

#: settings every test system uses unless it overrides them: fast, small, no sample corpus
TEST_DEFAULTS: dict[str, Any] = {
    "supervisor__ingest_sample_on_empty": False,
    "supervisor__grace_seconds": 3.0,
    "restart__backoff_initial_seconds": 0.2,
    "restart__backoff_max_seconds": 1.0,
    "embedder__backend": "hashing",  # fast and exact; MiniLM tests ask for it by name
    "hashing__dim": 256,
    "embedder__lease_seconds": 3.0,
    "embedder__poll_seconds": 0.1,
    "embedder__batch_size": 32,
    "indexer__commit_max_ms": 20,
    "query__follow_poll_seconds": 0.2,
    # pytest and the roles load this small machine themselves: yielding to that load only
    # makes timing tests slow (tests/unit/test_embedder_role.py covers yielding)
    "embedder__busy_cpu_percent": 100.0,
    # many systems start on this machine at once (tests, benches, a fresh clone): any free port
    "web__port": 0,
}
#: seconds to wait for a state real processes reach in their own time (60): a deadline that
#: only a broken system misses, however loaded the machine (a passing test never waits it out)
PATIENCE = 60.0


class FakeClock:
    """A clock that only moves when someone sleeps on it (or a test advances it).

    Pass `clock` as the clock and `clock.sleep` as the sleep of the code under test: its
    waits then take no real time and are recorded in `sleeps`. Sleeps from several threads
    add up (each advances the clock by its own length). Thread-safe.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something true, and return that; AssertionError
    naming `what` after `timeout` seconds. For states real processes reach in their own time:
    the deadline is generous (a loaded machine is slow), the poll is short (a quick one is fast)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def log_records(path: Path) -> list[tuple[float, str]]:
    """(time, message) of each record of a roxi log ("2025-01-02 03:04:05,678 name[pid] LEVEL
    message"; lines of a traceback are skipped): the times the process noted itself, in
    seconds since the epoch, to the millisecond."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        parts = line[24:].split(" ", 2)  # name[pid], LEVEL, message
        if len(parts) == 3:
            records.append((at, parts[2]))
    return records


def write_toml(path: Path, overrides: dict[str, Any]) -> Path:
    sections: dict[str, dict[str, Any]] = {}
    for name, value in overrides.items():
        section, key = name.rsplit("__", 1)  # restart__embedder__flap_count -> [restart.embedder]
        sections.setdefault(section.replace("__", "."), {})[key] = value
    lines = []
    for section, values in sorted(sections.items()):  # [restart] before [restart.embedder]
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                text = repr(value)
            lines.append(f"{key} = {text}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., config_mod.Config]:
    def make(data_dir: Path | None = None, **overrides: Any) -> config_mod.Config:
        settings = {**TEST_DEFAULTS, **overrides}
        conf = write_toml(tmp_path / f"roxi-{len(list(tmp_path.glob('roxi-*.toml')))}.toml", settings)
        return config_mod.load(conf, data_dir=data_dir or tmp_path / "data", env={})
    return make


def clean_env() -> dict[str, str]:
    """The caller's environment without ROXI_* variables that could change a test system."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ROXI_")}


class System:
    """A real supervisor with its roles, in a temporary data directory."""

    def __init__(self, cfg: config_mod.Config) -> None:
        self.cfg = cfg
        self.proc: subprocess.Popen | None = None

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> "System":
        self.cfg.log_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(self.cfg.log_dir / "supervisor.out", "ab")  # records go to supervisor.log
        self.proc = subprocess.Popen([sys.executable, "-m", "supervisor", *self.cfg.to_argv(), "--quiet"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=clean_env(),
                                     start_new_session=True)
        if wait:
            self.wait_ready(timeout=timeout)
        return self

    def control(self, timeout: float = 5.0) -> ControlClient:
        return ControlClient.for_config(self.cfg, timeout=timeout)

    def query_client(self, timeout: float = 10.0) -> QueryClient:
        return QueryClient.for_config(self.cfg, timeout=timeout)

    def status(self) -> dict:
        with self.control() as c:
            return c.command("status")

    def role(self, name: str) -> dict:
        return next(r for r in self.status()["roles"] if r["name"] == name)

    def wait_for(self, predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except (RoxiError, OSError, StopIteration, KeyError) as exc:
                last_exc = exc
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"supervisor exited with {self.proc.returncode} waiting for {what}\n"
                                     + self.logs())
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_exc})\n"
                             + self.logs())

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.wait_for(lambda: all(r["state"] in READY_STATES for r in self.status()["roles"]),
                      timeout=timeout, what="all roles running")

    def stats(self):
        with Store(self.cfg.db_path) as store:
            return store.stats()

    def wait_indexed(self, n: int, timeout: float = 60.0) -> None:
        self.wait_for(lambda: self.stats().indexed >= n, timeout=timeout, what=f"{n} chunks indexed")

    def pid(self, name: str) -> int:
        return self.role(name)["pid"]

    def logs(self) -> str:
        out = []
        for path in sorted(self.cfg.log_dir.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            out.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.log.close()

    def kill_everything(self) -> None:
        """Last-resort cleanup: the supervisor's whole session, so no test leaks processes."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


def roxi_processes(data_dir: Path) -> list[psutil.Process]:
    """Live processes whose command line names this data directory."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(data_dir) in " ".join(p.info["cmdline"] or []) and p.pid != os.getpid():
                out.append(p)
        except psutil.Error:
            continue
    return out


@pytest.fixture(autouse=True)
def _niceness_kept():
    """No test may renice pytest's own process: every later test, and every process it
    starts, would run at a lower priority (the embedder's os.nice once ran in its
    initialize(), and the unit tests took pytest to nice 19)."""
    before = os.nice(0)
    yield
    assert os.nice(0) == before, f"this test reniced pytest's process: nice {before} -> {os.nice(0)}"


@pytest.fixture
def system(make_config):
    """Factory: system(**overrides) -> started System; every one is torn down after the test."""
    started: list[System] = []

    def make(cfg: config_mod.Config | None = None, *, start: bool = True, **overrides: Any) -> System:
        s = System(cfg or make_config(**overrides))
        started.append(s)
        return s.start() if start else s

    yield make
    for s in started:
        try:
            s.stop(timeout=15)
        except Exception:
            pass
        s.kill_everything()
