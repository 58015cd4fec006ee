"""Lifecycle of a running system, as library calls: start, stop, status, notify.

The CLI, the tests and any embedding program use these, so the rules live in one place:
"is it running" is answered by the data directory's lock (the kernel's word, immune to
stale pid files and leftover sockets), and status reads the store directly so that it
works, and wakes nothing, whether or not the system runs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from .client import ControlClient
from .config import Config
from .errors import AlreadyRunning, NotRunning, RoxiError, Timeout
from .lock import holder_pid, is_locked
from .store import Store

#: how often start/stop re-check while waiting, seconds
POLL = 0.1


def store_stats(cfg: Config) -> dict[str, Any]:
    if not cfg.db_path.exists():
        return {"documents": 0, "chunks": 0, "pending": 0, "leased": 0, "indexed": 0, "failed": 0,
                "committed_rows": 0, "percent": 0.0}
    with Store(cfg.db_path, busy_timeout_ms=cfg.store.busy_timeout_ms) as store:
        return store.stats().as_dict()


def is_running(cfg: Config) -> bool:
    return is_locked(cfg.lock_path)


def status(cfg: Config) -> dict[str, Any]:
    """Supervisor and roles (when running) plus store counts."""
    data: dict[str, Any] = {"running": False, "supervisor": None, "roles": []}
    if is_running(cfg):
        try:
            with ControlClient.for_config(cfg, timeout=5.0) as client:
                reply = client.command("status")
            data.update(running=True, supervisor=reply["supervisor"], roles=reply["roles"])
        except (NotRunning, Timeout):
            data["supervisor"] = None  # locked but not answering: starting or stopping
    data["store"] = store_stats(cfg)
    return data


def start_background(cfg: Config, *, timeout: float | None = None) -> dict[str, Any]:
    """Spawn a detached supervisor and wait until every role reported ready."""
    if is_running(cfg):
        raise AlreadyRunning(f"another supervisor (pid {holder_pid(cfg.lock_path)}) is running on {cfg.data_dir}")
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    log_path = cfg.log_dir / "supervisor.log"
    with open(log_path, "ab") as logfile:
        proc = subprocess.Popen([sys.executable, "-m", "supervisor", *cfg.to_argv()],
                                stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + (timeout or cfg.supervisor.start_timeout_seconds + 5)
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise _start_failure(code, log_path)
        if is_running(cfg):
            try:
                with ControlClient.for_config(cfg, timeout=2.0) as client:
                    last = client.command("status")
            except (NotRunning, Timeout):
                last = None
            if last and all(r["state"] == "running" for r in last["roles"]):
                return last
            failed = [r["name"] for r in (last or {}).get("roles", []) if r["state"] == "failed"]
            if failed:
                reasons = "; ".join(f"{name}: {last_error_line(cfg.log_dir / (name + '.log'))}"
                                    for name in failed)
                raise RoxiError(f"role failed to start: {reasons}")
        time.sleep(POLL)
    waiting = [r["name"] for r in (last or {}).get("roles", []) if r["state"] != "running"]
    raise Timeout(f"not ready in time: {', '.join(waiting) or 'supervisor'} (see {cfg.log_dir})")


def _start_failure(code: int, log_path) -> RoxiError:
    tail = ""
    try:
        lines = log_path.read_text(errors="replace").strip().splitlines()
        tail = next((ln for ln in reversed(lines) if ln.startswith("roxi:")), lines[-1] if lines else "")
    except OSError:
        pass
    err = RoxiError(tail.removeprefix("roxi: ") or f"supervisor exited with code {code}")
    err.exit_code = code or 1
    return err


def last_error_line(path) -> str:
    """The last ERROR line of a log file, for one-line failure messages."""
    try:
        lines = path.read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return "no log"
    for line in reversed(lines):
        if " ERROR " in line:
            return line.split(" ERROR ", 1)[1]
    return lines[-1] if lines else "no log"


def stop(cfg: Config, *, timeout: float | None = None) -> int | None:
    """Ask the supervisor to stop and wait until it released the data directory."""
    if not is_running(cfg):
        raise NotRunning(f"not running on {cfg.data_dir}")
    pid = holder_pid(cfg.lock_path)
    with ControlClient.for_config(cfg, timeout=5.0) as client:
        client.command("stop")
    wait = timeout if timeout is not None else cfg.supervisor.grace_seconds * 4 + 5
    deadline = time.monotonic() + wait
    while is_running(cfg):
        if time.monotonic() > deadline:
            raise Timeout(f"supervisor {pid} still running after {wait:g} s")
        time.sleep(POLL)
    return pid

