"""One supervised child process: its state, its restart policy, and its status row.

The state is one Enum changed in one place (`Child._set_state`), never a set of booleans;
the arbiter asks for changes (`request_stop`, `request_restart`) and reports events
(`spawned`, `beat`, `exited`), and the child decides its next state. A stop (by hand or
for shutdown) is STOPPING until the exit, then STOPPED: nothing but an operator restart
leaves STOPPED, so a stop by hand needs no flag of its own. An operator restart of a live
child is RESTARTING until the exit, then an immediate respawn that counts no failure.
The restart policy is capped exponential backoff that resets after a stable run, plus
flapping detection: `flap_count` failures within `flap_window_seconds` put the child in
FAILED, where it stays until an operator restarts it. A child that exits with BOOT_ERROR
goes straight to FAILED: it cannot start until something is fixed, so respawning it is a
tight loop that helps no one. A child that exits with SUSPENDED (a role in deep sleep with
nothing to do, issue 22) is SUSPENDED: neither failed nor stopped, no backoff, no restart
counted; the arbiter starts it again (`resumed`) when work appears for it.
"""

from __future__ import annotations

import contextlib
import collections
import enum
import math
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from roxi_mp.compact import is_vectors_file
from roxi_mp.config import RestartSettings
from roxi_mp.errors import BOOT_ERROR, SUSPENDED
from roxi_mp.logs import RotatingLog, tail
from roxi_mp.memory import Mapped, mapped_where


class ChildState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    ASLEEP = "asleep"  # running, and in deep sleep by its own report
    RESTARTING = "restarting"  # an operator restart: stopping, then respawned at once
    SUSPENDED = "suspended"  # exited in deep sleep with nothing to do; started again on work

    @property
    def shown(self) -> str:
        """The state in status rows. A restart shows as "stopping" (which it is until the
        exit), so clients keep seeing only the states they know."""
        return "stopping" if self is ChildState.RESTARTING else self.value


#: states in which a child is up and answering its heartbeat
LIVE_STATES = (ChildState.RUNNING, ChildState.ASLEEP)


def mapped_vectors(pid: int, data_dir: Path) -> Mapped:
    """How much of the vectors files of `data_dir` process `pid` maps, from /proc/PID/smaps:
    vectors.faiss and every vectors.<epoch>.faiss (a compaction moves to the next one; the
    old one, deleted, stays mapped until the query server remaps). Zero if none or unknown."""
    prefix = os.path.realpath(data_dir) + "/"  # /proc names the resolved path
    return mapped_where(pid, lambda path: path.startswith(prefix) and is_vectors_file(path[len(prefix):]))


#: heartbeat fields a suspended child's status row keeps from its last process
KEPT_SUSPENDED = ("compaction", "model_id")

#: module under roxi_mp.roles of each role kind
MODULES = {"embedder": "embedder", "indexer": "indexer", "query": "query_server", "documents": "documents"}


@dataclass
class Child:
    kind: str  # role kind: "embedder", "indexer", "query" or "documents"
    name: str  # unique: "indexer", "query", "embedder-1", ...
    settings: RestartSettings
    state: ChildState = ChildState.STOPPED
    proc: subprocess.Popen | None = None
    started: float = 0.0  # monotonic time of the last spawn
    last_beat: float = 0.0
    next_start: float = 0.0
    restarts: int = 0
    exit_code: int | None = None
    kill_at: float | None = None  # SIGKILL deadline once SIGTERM was sent
    info: dict[str, Any] = field(default_factory=dict)
    failures: collections.deque = field(default_factory=lambda: collections.deque(maxlen=64))
    backoff: float = 0.0
    sink: RotatingLog | None = None  # the child's log file, fed from its stdout pipe
    resumes: int = 0  # starts out of SUSPENDED (not restarts: nothing failed)
    suspended_at: float = 0.0  # monotonic time of the last suspension
    suspended_since: float = 0.0  # and the same in wall-clock time, for status
    sleep_asked: bool = False  # an operator asked this process to sleep (`roxi sleep`)
    queued: list[str] = field(default_factory=list)  # commands to send once it is ready
    _ps: psutil.Process | None = None

    @property
    def module(self) -> str:
        return MODULES[self.kind]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _set_state(self, state: ChildState) -> None:
        self.state = state

    def spawned(self, proc: subprocess.Popen, now: float) -> None:
        if self.state is ChildState.SUSPENDED:
            self.resumes += 1
        elif self.exit_code is not None:  # an earlier process of this child exited: a restart
            self.restarts += 1
        self.sleep_asked = False
        self.proc = proc
        self.started = self.last_beat = now
        self.kill_at = None
        self.info = {}
        self._ps = None
        self._mapped: tuple[int, float, Any] | None = None  # (pid, when, mapped) of the last smaps read
        self._set_state(ChildState.STARTING)

    def exited(self, code: int, now: float, *, shutting_down: bool) -> None:
        """Decide what follows an exit: stopped, backoff, or failed."""
        self.exit_code = code
        self.proc = None
        self.kill_at = None
        if self.state is ChildState.RESTARTING and not shutting_down:
            self.next_start = now  # respawned by the next manage_children, counting no failure
            self._set_state(ChildState.BACKOFF)
            return
        if shutting_down or self.state is ChildState.STOPPING:  # a wanted exit
            self._set_state(ChildState.STOPPED)
            return
        if code == BOOT_ERROR:
            self._set_state(ChildState.FAILED)
            return
        if code == SUSPENDED:
            self.suspended_at, self.suspended_since = now, time.time()
            # What the process said of itself (a loaded model, counts) left with it; what
            # the store keeps anyway (the compactions) stays in status.
            self.info = {k: v for k, v in self.info.items() if k in KEPT_SUSPENDED}
            self._set_state(ChildState.SUSPENDED)
            return
        s = self.settings
        if now - self.started >= s.stable_seconds:
            self.backoff = 0.0  # a long good run forgives earlier failures
            self.failures.clear()
        self.failures.append(now)
        recent = [t for t in self.failures if now - t <= s.flap_window_seconds]
        if len(recent) >= s.flap_count:
            self._set_state(ChildState.FAILED)
            return
        self.backoff = s.backoff_initial_seconds if self.backoff == 0 else min(self.backoff * 2,
                                                                                s.backoff_max_seconds)
        self.next_start = now + self.backoff
        self._set_state(ChildState.BACKOFF)

    def request_stop(self, *, shutdown: bool = False) -> bool:
        """Stop by hand, or for `shutdown`: whatever exit follows, the child stays STOPPED
        until an operator restart. True when a process must be signalled; without one
        the child is STOPPED at once (a shutdown leaves a FAILED child FAILED, so the last
        status still says why)."""
        if self.proc is not None:
            self._set_state(ChildState.STOPPING)
            return True
        if not (shutdown and self.state is ChildState.FAILED):
            self._set_state(ChildState.STOPPED)
        return False

    def request_restart(self) -> bool:
        """Operator restart: forget failures and backoff (clearing FAILED and a stop by
        hand). True when a live process must first be stopped (RESTARTING until it exits);
        False when the child may be spawned at once."""
        self.failures.clear()
        self.backoff = 0.0
        self.next_start = 0.0
        if self.proc is not None:
            self._set_state(ChildState.RESTARTING)
            return True
        return False

    def beat(self, info: dict[str, Any], now: float) -> bool:
        """Record a heartbeat; returns True when it was the READY handshake."""
        self.last_beat = now
        self.info = info
        ready = self.state is ChildState.STARTING
        if self.state in (ChildState.STARTING, *LIVE_STATES):
            self._set_state(ChildState.ASLEEP if info.get("state") == "asleep" else ChildState.RUNNING)
        return ready

    def status(self, now: float, *, vectors_dir: Path | None = None) -> dict[str, Any]:
        row: dict[str, Any] = {
            "name": self.name, "role": self.kind, "state": self.state.shown, "pid": self.pid,
            "uptime": round(now - self.started, 1) if self.proc is not None else None,
            "restarts": self.restarts, "exit_code": self.exit_code,
            "heartbeat_age": round(now - self.last_beat, 2) if self.proc is not None else None,
            "rss": None, "cpu_percent": None, "cpu_seconds": None,
        }
        if self.proc is not None:
            with contextlib.suppress(psutil.Error):  # exiting right now: the row says "-"
                if self._ps is None or self._ps.pid != self.proc.pid:
                    self._ps = psutil.Process(self.proc.pid)
                row["rss"] = self._ps.memory_info().rss
                row["cpu_percent"] = self._ps.cpu_percent(None)
                times = self._ps.cpu_times()
                row["cpu_seconds"] = round(times.user + times.system, 2)
            if vectors_dir is not None:  # read from /proc: asks the child nothing
                # smaps walks the page tables of a mapping (ms for 1M rows): at most once a second
                if self._mapped is None or self._mapped[0] != self.proc.pid or now - self._mapped[1] >= 1.0:
                    self._mapped = (self.proc.pid, now, mapped_vectors(self.proc.pid, vectors_dir))
                held = self._mapped[2]
                row["mapped_bytes"], row["mapped_rss"] = held.size, held.rss
        if self.state is ChildState.SUSPENDED:
            # to 0.1 s, down: a moment is never reported as later than it was (round() put it
            # up to 0.05 s in the future, and a status read at once saw a time not yet come)
            row["suspended_since"] = math.floor(self.suspended_since * 10) / 10
            row["suspended_seconds"] = round(now - self.suspended_at, 1)
        if self.resumes:
            row["resumes"] = self.resumes
        if self.state is ChildState.BACKOFF:
            row["restart_in"] = round(max(0.0, self.next_start - now), 2)
        if self.state is ChildState.FAILED and self.sink is not None:
            row["log_tail"] = tail(self.sink.path, 10)
        row.update({k: v for k, v in self.info.items() if k not in row and k not in ("v", "type")})
        return row
