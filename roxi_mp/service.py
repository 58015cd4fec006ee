"""Lifecycle of a running system, as library calls: start, stop, status, notify.

The CLI, the tests and any embedding program use these, so the rules live in one place:
"is it running" is answered by the data directory's lock (the kernel's word, immune to
stale pid files and leftover sockets), and status reads the store directly so that it
works, and wakes nothing, whether or not the system runs.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from typing import Any, Callable

from . import keys
from .client import ControlClient
from .config import Config
from .errors import AlreadyRunning, NotRunning, RoxiError, Timeout
from .lock import holder_pid, holder_purpose, is_locked
from .store import Store

#: how often start/stop re-check while waiting, seconds
POLL = 0.1
#: role states that count as up ("suspended": exited in deep sleep, started again on work)
READY_STATES = ("running", "asleep", "suspended")


#: window over which `roxi progress` measures the indexing rate, seconds
RATE_WINDOW = 300.0


def store_stats(cfg: Config) -> dict[str, Any]:
    """Store counts, the indexing rate over the last minutes, an ETA, and the pause flag."""
    if not cfg.db_path.exists():
        return {"documents": 0, "chunks": 0, "pending": 0, "leased": 0, "indexed": 0, "failed": 0,
                "committed_rows": 0, "percent": 0.0, "rate_per_second": 0.0, "eta_seconds": None,
                "paused": False}
    with Store.open(cfg) as store:
        return stats_of(store, now=time.time())


def stats_of(store: Store, *, now: float) -> dict[str, Any]:
    """`store_stats` of an open store (the supervisor's own, for its resources page)."""
    stats = store.stats().as_dict()
    rate = store.rate(now=now, window=RATE_WINDOW)
    left = stats["pending"] + stats["leased"]
    stats.update(rate_per_second=round(rate, 2), paused=store.paused(),
                 eta_seconds=round(left / rate, 1) if rate > 0 and left else (0.0 if not left else None))
    return stats


def set_paused(cfg: Config, paused: bool) -> None:
    """Pause or resume processing: persisted in the store (it survives restarts), and the
    embedders are told at once when the system runs. In-flight batches still commit."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    with Store.open(cfg) as store:
        store.set_paused(paused)
    if is_running(cfg):
        with contextlib.suppress(RoxiError):  # embedders read the flag before every claim anyway
            control(cfg, "notify", timeout=2.0, event="pause" if paused else "resume")


def is_running(cfg: Config) -> bool:
    return is_locked(cfg.lock_path) and holder_purpose(cfg.lock_path) == "supervisor"


def check_store_writable(cfg: Config) -> None:
    """Refuse while a reembed or restore rebuilds the store: what is written now would be lost."""
    if is_locked(cfg.lock_path) and holder_purpose(cfg.lock_path) != "supervisor":
        raise AlreadyRunning(f"a {holder_purpose(cfg.lock_path)} (pid {holder_pid(cfg.lock_path)}) is "
                             f"rebuilding the store in {cfg.data_dir}; try again when it has finished")


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
    if keys.needs_keys(cfg):
        keys.server_keys(cfg)  # say so here, in one line, rather than from the detached process
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    # Records go to the rotating supervisor.log; the console output of the detached
    # process (a traceback before logging is set up, a boot error) lands in supervisor.out.
    log_path = cfg.log_dir / "supervisor.out"
    with open(log_path, "ab") as logfile:
        proc = subprocess.Popen([sys.executable, "-m", "supervisor", *cfg.to_argv(), "--quiet"],
                                stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)

    def pending(roles: dict[str, dict] | None) -> list[str]:
        code = proc.poll()
        if code is not None:
            raise _start_failure(code, log_path)
        if roles is None:
            return ["supervisor"]
        failed = [name for name, r in roles.items() if r["state"] == "failed"]
        if failed:
            reasons = "; ".join(f"{name}: {last_error_line(cfg.log_dir / (name + '.log'))}" for name in failed)
            raise RoxiError(f"role failed to start: {reasons}")
        return [name for name, r in roles.items() if r["state"] not in READY_STATES]

    return _wait_roles(cfg, pending, timeout=timeout or cfg.supervisor.start_timeout_seconds + 5,
                       late=lambda waiting: f"not ready in time: {', '.join(waiting)} (see {cfg.log_dir})",
                       status=lambda: _status_if_answering(cfg))


def _status_if_answering(cfg: Config) -> dict[str, Any] | None:
    """The supervisor's status, or None while it is not up (or not answering) yet."""
    if not is_running(cfg):
        return None
    try:
        with ControlClient.for_config(cfg, timeout=2.0) as client:
            return client.command("status")
    except (NotRunning, Timeout):
        return None


def _start_failure(code: int, log_path) -> RoxiError:
    tail = ""
    with contextlib.suppress(OSError):  # no log to quote: the exit code alone is reported
        lines = log_path.read_text(errors="replace").strip().splitlines()
        tail = next((ln for ln in reversed(lines) if ln.startswith("roxi:")), lines[-1] if lines else "")
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


def control(cfg: Config, command: str, *, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
    """One control command to the running supervisor."""
    if not is_running(cfg):
        raise NotRunning(f"not running on {cfg.data_dir}")
    with ControlClient.for_config(cfg, timeout=timeout) as client:
        return client.command(command, **args)


def _wait_roles(cfg: Config, pending: Callable[[dict[str, dict] | None], list[str]], *, timeout: float,
                late: Callable[[list[str]], str],
                status: Callable[[], dict[str, Any] | None] | None = None) -> dict[str, Any] | None:
    """Poll the supervisor's status every POLL seconds until `pending(roles by name)` names no
    role, and return that status; after `timeout` seconds raise Timeout(late(names)).
    `pending` raises to give up early (a role failed); `status` None means "not up yet"."""
    deadline = time.monotonic() + timeout
    while True:
        last = status() if status is not None else control(cfg, "status")
        waiting = pending(None if last is None else {r["name"]: r for r in last["roles"]})
        if not waiting:
            return last
        if time.monotonic() > deadline:
            raise Timeout(late(waiting))
        time.sleep(POLL)


def stop_role(cfg: Config, role: str, *, timeout: float | None = None) -> list[str]:
    """Stop one role by hand and wait until its processes are gone."""
    names = control(cfg, "stop", role=role)["stopped"]
    wait = timeout if timeout is not None else cfg.supervisor.grace_seconds + 5
    _wait_roles(cfg, lambda roles: names if any(roles[n]["pid"] is not None for n in names) else [],
                timeout=wait, late=lambda _: f"{', '.join(names)} still running after {wait:g} s")
    return names


def restart_role(cfg: Config, role: str, *, timeout: float | None = None) -> list[str]:
    """Restart a role (clearing failed or stopped) and wait until it is up again."""
    names = control(cfg, "restart", role=role)["restarted"]
    wait = timeout if timeout is not None else cfg.supervisor.grace_seconds + cfg.supervisor.start_timeout_seconds

    def pending(roles: dict[str, dict]) -> list[str]:
        if all(roles[n]["state"] in READY_STATES for n in names):
            return []
        failed = [n for n in names if roles[n]["state"] == "failed"]
        if failed:
            raise RoxiError(f"{', '.join(failed)} failed again: "
                            f"{last_error_line(cfg.log_dir / (failed[0] + '.log'))}")
        return names

    _wait_roles(cfg, pending, timeout=wait, late=lambda _: f"{', '.join(names)} not running after {wait:g} s")
    return names


def sleep_roles(cfg: Config, role: str | None, *, wake: bool, timeout: float = 15.0) -> list[str]:
    """Ask roles to sleep (or wake) and wait until a heartbeat sent after the request says so.

    Status rows lag the roles by up to one heartbeat, so a row is believed only once its
    heartbeat sequence number has moved past the one seen when the request was sent.
    The indexer has nothing to unload and sleeps once nothing is in hand (rows to commit,
    a build, a compaction): it is not waited for. A role asleep already answers with a
    heartbeat all the same (roles/base.py, ANSWERED_BY_A_BEAT).
    A role that exits to sleep (suspended, issue 22) is done once gone; one suspended and
    asked to wake is started by the supervisor, and waited for until it runs.
    """
    seen = {r["name"]: r.get("seq", 0) for r in control(cfg, "status")["roles"]}
    names = control(cfg, "wake" if wake else "sleep", role=role)["asked"]
    want = "running" if wake else "asleep"

    def pending(roles: dict[str, dict]) -> list[str]:
        return [n for n in names if roles[n]["role"] != "indexer" and roles[n]["pid"] is not None
                and (roles[n]["state"] != want or roles[n].get("seq", 0) <= seen.get(n, 0))]

    _wait_roles(cfg, pending, timeout=timeout,
                late=lambda waiting: f"{', '.join(waiting)} not {want} after {timeout:g} s")
    return names


def notify_ingest(cfg: Config) -> bool:
    """Tell a running supervisor that chunks are pending, so sleeping embedders wake at once."""
    if not is_running(cfg):
        return False
    try:
        control(cfg, "notify", timeout=2.0)
        return True
    except RoxiError:
        return False  # best effort: embedders also look for work every wake_check_seconds


def retry_failed(cfg: Config) -> int:
    """Put failed chunks back to pending (fresh attempts) and wake the embedders."""
    with Store.open(cfg) as store:
        count = store.retry_failed()
    if count:
        notify_ingest(cfg)
    return count


def compact(cfg: Config) -> dict[str, Any]:
    """Ask the running system to compact the store now: {"started", "running", "message"}.
    A compaction already running is not started twice (started false, running true); a
    refusal (not enough disk for the new file) is a ServerError with code busy."""
    return control(cfg, "compact")


def failures(cfg: Config, limit: int = 20) -> list[dict[str, Any]]:
    if not cfg.db_path.exists():
        return []
    with Store.open(cfg) as store:
        return [{"chunk_id": cid, "source": source, "error": error} for cid, source, error in store.failures(limit)]


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

