"""The supervisor's arbiter: spawn the roles, watch them, restart them, stop them in order.

The shape is gunicorn's arbiter. The main loop fits on a screen: wait (on the control
socket, the heartbeat socket and the signal pipe, with a timeout), dispatch queued signals,
reap exited children, kill the stalled ones, start those whose backoff is over, and advance
an ordered shutdown. Signal handlers only queue the signal number. Nothing in the loop
blocks: a child's crash loop costs one poll timeout, never the control socket's time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zmq

from roxi_mp import ingest, keys, protocol
from roxi_mp.config import Config
from roxi_mp.errors import BadInput
from roxi_mp.lock import DataDirLock
from roxi_mp.logs import RotatingLog, log_path
from roxi_mp.staging import complete_swap
from roxi_mp.roles.base import ENV_SUPERVISOR_PID
from roxi_mp.store import Store

from . import commands
from .backups import BackupScheduler
from .child import LIVE_STATES, Child, ChildState

log = logging.getLogger("roxi.supervisor")

#: how long the loop waits for events when nothing is due, seconds
LOOP_TIMEOUT = 0.25
#: seconds a status answer reuses store counts and /proc/PID/smaps readings
STATUS_CACHE_SECONDS = 1.0
#: stop order: embedders first (stop producing), then the indexer (flushes), then queries
STOP_ORDER = ("embedder", "indexer", "query")
#: signals the arbiter handles (queued by the handler, dispatched by the loop)
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP)


class Arbiter:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.lock = DataDirLock(cfg.lock_path)
        self.children: list[Child] = []
        self.sig_queue: list[int] = []
        self.shutdown_phase: int | None = None  # index into STOP_ORDER while stopping
        self.phase_deadline = 0.0
        self.started = time.monotonic()
        self.exit_code = 0
        self._stats: dict[str, Any] | None = None
        self._stats_at = 0.0

    # --- start -------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the data directory (AlreadyRunning if taken): before anything else is touched."""
        if self.lock.fd is None:
            self.lock.acquire()

    def start(self) -> None:
        cfg = self.cfg
        self.acquire()
        if keys.needs_keys(cfg):
            keys.server_keys(cfg)  # a tcp:// endpoint without CURVE keys never opens
        for d in (cfg.data_dir, cfg.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        cfg.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(cfg.run_dir, 0o700)  # sockets are the door to the data: owner only
        if complete_swap(cfg):  # a reembed or restore was interrupted mid-swap: finish it
            log.warning("finished an interrupted store swap (old files in %s)", cfg.data_dir / "previous")
        self.store = Store.open(cfg)
        if cfg.supervisor.ingest_sample_on_empty and ingest.is_empty_store(self.store):
            report = ingest.ingest_paths(self.store, [ingest.sample_corpus_dir()],
                                         chunk_words=cfg.store.chunk_words,
                                         chunk_overlap=cfg.store.chunk_overlap,
                                         max_document_bytes=cfg.store.max_document_bytes)
            log.info("empty store: ingested the sample corpus (%d documents, %d chunks)",
                     report.added, report.chunks)
        self.ctx = zmq.Context()
        lim = cfg.limits
        self.control = protocol.configure(self.ctx.socket(zmq.ROUTER), hwm=lim.socket_hwm,
                                          max_message_bytes=2 * lim.max_message_bytes)
        self.control.bind(cfg.endpoint("control"))
        self.beats = protocol.configure(self.ctx.socket(zmq.PULL), hwm=lim.socket_hwm,
                                        max_message_bytes=64 * 1024)
        self.beats.bind(cfg.endpoint("heartbeat"))
        self.commands = protocol.configure(self.ctx.socket(zmq.PUB), hwm=lim.socket_hwm)
        self.commands.bind(cfg.endpoint("commands"))
        self.query_served = 0
        self.sig_r, self.sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.sig_w, warn_on_full_buffer=False)
        for sig in SIGNALS:
            signal.signal(sig, self._queue_signal)
        self.poller = zmq.Poller()
        for sock in (self.control, self.beats):
            self.poller.register(sock, zmq.POLLIN)
        self.poller.register(self.sig_r, zmq.POLLIN)
        self.children = [Child("indexer", "indexer", cfg.restart_for("indexer")),
                         Child("query", "query", cfg.restart_for("query"))]
        self.children += [Child("embedder", f"embedder-{i}", cfg.restart_for("embedder"))
                          for i in range(1, cfg.embedder.count + 1)]
        now = time.monotonic()
        for child in self.children:
            self.spawn_child(child, now)
        self.backups = BackupScheduler(cfg, self.store, now)
        log.info("supervisor %d started on %s", os.getpid(), cfg.data_dir)

    def _queue_signal(self, signum: int, frame: object) -> None:
        self.sig_queue.append(signum)  # no logging, no I/O: the loop handles it

    # --- main loop ---------------------------------------------------------------
    def run(self) -> int:
        self.acquire()  # outside the try: a refused supervisor has nothing to clean up
        try:
            self.start()
            while not self.finished():
                self.wait()
                now = time.monotonic()
                self.handle_signals()
                self.reap_children(now)
                self.kill_stalled_children(now)
                self.manage_children(now)
                self.backups.manage(now, stopping=self.shutdown_phase is not None)
                self.manage_shutdown(now)
        finally:
            self.cleanup()
        return self.exit_code

    def wait(self) -> None:
        for sock, _ in self.poller.poll(int(self.loop_timeout() * 1000)):
            if sock is self.control:
                self.handle_control()
            elif sock is self.beats:
                self.handle_heartbeats()
            elif sock == self.sig_r:
                with contextlib.suppress(BlockingIOError):  # drained: the signals wait in sig_queue
                    while os.read(self.sig_r, 512):
                        continue
            else:
                child = next((c for c in self.children if c.proc is not None and c.proc.stdout is not None
                              and not c.proc.stdout.closed and c.proc.stdout.fileno() == sock), None)
                if child is not None:
                    self.drain_output(child)

    def loop_timeout(self) -> float:
        """Poll slowly while every role sleeps: the sleeping system should cost ~no CPU."""
        if self.shutdown_phase is None and self.children and all(
                c.state in (ChildState.ASLEEP, ChildState.STOPPED, ChildState.FAILED) for c in self.children):
            return self.cfg.supervisor.sleep_poll_seconds
        return LOOP_TIMEOUT

    def finished(self) -> bool:
        return (self.shutdown_phase is not None and self.shutdown_phase >= len(STOP_ORDER)
                and not self.backups.running())

    def handle_signals(self) -> None:
        while self.sig_queue:
            signum = self.sig_queue.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self.begin_shutdown(f"signal {signal.Signals(signum).name}")

    # --- children ----------------------------------------------------------------
    def spawn_child(self, child: Child, now: float) -> None:
        cfg = self.cfg
        env = {**os.environ, ENV_SUPERVISOR_PID: str(os.getpid())}
        argv = [sys.executable, "-m", f"roxi_mp.roles.{child.module}", *cfg.to_argv(), "--name", child.name]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, close_fds=True)
        os.set_blocking(proc.stdout.fileno(), False)
        self.poller.register(proc.stdout.fileno(), zmq.POLLIN)
        if child.sink is None:
            child.sink = RotatingLog(log_path(cfg.log_dir, child.name), max_bytes=cfg.supervisor.log_max_bytes,
                                     backups=cfg.supervisor.log_backups)
        child.spawned(proc, now)
        log.info("spawned %s (pid %d)", child.name, proc.pid)

    def drain_output(self, child: Child, *, limit: int = 1 << 20) -> None:
        """Copy what the child wrote to its log; bounded so a flood cannot starve the loop."""
        proc = child.proc
        if proc is None or proc.stdout is None or proc.stdout.closed:
            return
        fd = proc.stdout.fileno()
        copied = 0
        while copied < limit:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not data:  # EOF: the child closed its output (it is exiting)
                self.poller.unregister(fd)
                proc.stdout.close()
                return
            child.sink.write(data)
            copied += len(data)

    def reap_children(self, now: float) -> None:
        for child in self.children:
            if child.proc is None:
                continue
            code = child.proc.poll()
            if code is None:
                continue
            self.drain_output(child)  # its last words (a traceback) belong in its log
            if child.proc.stdout is not None and not child.proc.stdout.closed:
                self.poller.unregister(child.proc.stdout.fileno())
                child.proc.stdout.close()
            child.exited(code, now, shutting_down=self.shutdown_phase is not None)
            level = logging.INFO if child.state is ChildState.STOPPED else logging.WARNING
            log.log(level, "%s exited with %d -> %s", child.name, code, child.state.value)

    def kill_stalled_children(self, now: float) -> None:
        s = self.cfg.supervisor
        for child in self.children:
            if child.proc is None:
                continue
            if child.kill_at is not None:
                if now >= child.kill_at:
                    self.signal_child(child, signal.SIGKILL)
                continue
            silent = now - child.last_beat
            if child.state in LIVE_STATES and silent > s.liveness_seconds:
                log.warning("%s silent for %.1f s: hung, terminating", child.name, silent)
                self.kill_child(child, now)
            elif child.state is ChildState.STARTING and silent > s.start_timeout_seconds:
                log.warning("%s not ready after %.1f s, terminating", child.name, silent)
                self.kill_child(child, now)

    def manage_children(self, now: float) -> None:
        if self.shutdown_phase is not None:
            return
        for child in self.children:
            if child.state is ChildState.BACKOFF and now >= child.next_start:
                self.spawn_child(child, now)

    def kill_child(self, child: Child, now: float) -> None:
        """SIGTERM now, SIGKILL at the end of the grace period if it is still there."""
        if child.proc is None or child.kill_at is not None:
            return
        self.signal_child(child, signal.SIGTERM)
        child.kill_at = now + self.cfg.supervisor.grace_seconds

    def signal_child(self, child: Child, sig: int) -> None:
        if child.proc is not None:
            with contextlib.suppress(ProcessLookupError):  # it exited already; reap_children sees it
                child.proc.send_signal(sig)

    def handle_heartbeats(self) -> None:
        for _ in range(1000):
            try:
                data = self.beats.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                beat = protocol.unpack_map(data, max_bytes=64 * 1024)
            except protocol.ProtocolError:
                continue
            child = self.child(beat.get("name"))
            if child is None or child.pid != beat.get("pid"):
                continue  # a beat from a previous incarnation
            if child.beat(beat, time.monotonic()):  # the first beat is the READY handshake
                log.info("%s ready", child.name)
            if child.kind == "query":
                served = beat.get("served", 0)
                if isinstance(served, int) and served > self.query_served:
                    self.publish("embedder", "queries")  # embedders yield while queries flow
                self.query_served = served if isinstance(served, int) else 0

    def child(self, name: Any) -> Child | None:
        return next((c for c in self.children if c.name == name), None)

    def select(self, target: str) -> list[Child]:
        """Children named by an operator: a role kind ("embedder") or one name ("embedder-2")."""
        chosen = [c for c in self.children if target in (c.kind, c.name)]
        if not chosen:
            names = sorted({c.kind for c in self.children} | {c.name for c in self.children})
            raise BadInput(f"no role {target!r} (known: {', '.join(names)})")
        return chosen

    def publish(self, target: str, op: str) -> None:
        """A command to roles: "all", a kind or a name (see protocol.command_topic)."""
        with contextlib.suppress(zmq.Again):  # commands are hints; roles also poll the store
            self.commands.send_multipart([protocol.command_topic(target),
                                          protocol.pack({"v": protocol.VERSION, "op": op})], zmq.NOBLOCK)

    def sleep_roles(self, target: str | None, *, wake: bool) -> list[str]:
        chosen = self.select(target) if target else self.children
        for child in chosen:
            self.publish(child.name, "wake" if wake else "sleep")
        return [c.name for c in chosen]

    def stop_role(self, target: str) -> list[str]:
        """Stop by hand: never restarted automatically until `restart`."""
        now = time.monotonic()
        chosen = self.select(target)
        for child in chosen:
            if child.request_stop():
                self.kill_child(child, now)
        return [c.name for c in chosen]

    def restart_role(self, target: str) -> list[str]:
        """Operator restart: clears failed/stopped, replaces a running child at once."""
        if self.shutdown_phase is not None:
            raise BadInput("the supervisor is stopping")
        now = time.monotonic()
        chosen = self.select(target)
        for child in chosen:
            if child.request_restart():
                self.kill_child(child, now)  # exits -> BACKOFF due now -> respawned by manage_children
            else:
                self.spawn_child(child, now)
        return [c.name for c in chosen]

    # --- shutdown ----------------------------------------------------------------
    def begin_shutdown(self, reason: str) -> None:
        if self.shutdown_phase is None:
            log.info("stopping (%s)", reason)
            self.shutdown_phase = -1
            self.phase_deadline = 0.0

    def manage_shutdown(self, now: float) -> None:
        """Advance through STOP_ORDER: a phase ends when its children exited or were killed."""
        if self.shutdown_phase is None or self.finished():
            return
        if self.shutdown_phase >= 0:
            role = STOP_ORDER[self.shutdown_phase]
            alive = [c for c in self.children if c.kind == role and c.proc is not None]
            if alive:
                return  # kill_stalled_children escalates to SIGKILL at each child's kill_at
        self.shutdown_phase += 1
        if self.finished():
            return
        role = STOP_ORDER[self.shutdown_phase]
        for child in self.children:
            if child.kind == role and child.request_stop(shutdown=True):
                self.kill_child(child, now)

    def cleanup(self) -> None:
        if hasattr(self, "backups"):
            self.backups.kill()
        for child in self.children:  # only on an unexpected exit of the loop
            if child.proc is not None and child.proc.poll() is None:
                self.signal_child(child, signal.SIGKILL)
                child.proc.wait(timeout=5)
            if child.sink is not None:
                child.sink.close()
        for name in ("control", "beats", "commands"):
            if hasattr(self, name):
                getattr(self, name).close(0)
        if hasattr(self, "ctx"):
            self.ctx.term()
        if hasattr(self, "store"):
            self.store.close()
        signal.set_wakeup_fd(-1)
        self.lock.release()
        log.info("supervisor stopped")

    # --- control -----------------------------------------------------------------
    def handle_control(self) -> None:
        for _ in range(100):
            try:
                frames = self.control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            answered = protocol.answer(frames, lambda msg, extra: commands.dispatch(self, msg),
                                       max_bytes=self.cfg.limits.max_message_bytes,
                                       on_internal=lambda exc: log.error("control command failed", exc_info=exc))
            if answered is None:
                continue
            with contextlib.suppress(zmq.ZMQError):  # the client went away; never block the loop
                self.control.send_multipart(answered[0], zmq.NOBLOCK)

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        stopping = self.shutdown_phase is not None
        return {"supervisor": {"pid": os.getpid(), "uptime": round(now - self.started, 1),
                               "state": "stopping" if stopping else "running",
                               "data_dir": str(self.cfg.data_dir)},
                "roles": [c.status(now, vectors_path=self.cfg.vectors_path if c.kind == "query" else None)
                          for c in self.children],
                "backups": self.backups.status(),
                "store": self._store_stats(now)}

    def _store_stats(self, now: float) -> dict[str, Any]:
        # Counting 1M chunks by state takes tens of ms: a client polling status in a loop
        # must not turn the supervisor into the busiest process on the machine.
        if self._stats is None or now - self._stats_at >= STATUS_CACHE_SECONDS:
            self._stats, self._stats_at = self.store.stats().as_dict(), now
        return self._stats


def log_file_tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 16384))
            return "\n".join(fh.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
