"""The supervisor's arbiter: spawn the roles, watch them, restart them, stop them in order.

The shape is gunicorn's arbiter. The main loop fits on a screen: wait (on the control
socket, the heartbeat socket and the signal pipe, with a timeout), dispatch queued signals,
reap exited children, kill the stalled ones, start those whose backoff is over, and advance
an ordered shutdown. Signal handlers only queue the signal number. Nothing in the loop
blocks: a child's crash loop costs one poll timeout, never the control socket's time.

The clock and the process factory are injected (time.monotonic and subprocess.Popen by
default), and the sockets are opened by `start` only, so tests drive `step(now)` and the
control commands with fake processes and chosen times (tests/unit/test_arbiter.py).

Suspended roles (issue 22): in deep sleep the embedders and the indexer exit with
SUSPENDED instead of idling in memory. The arbiter starts them again (`resume`) when work
appears: a work notice (`roxi ingest`, a documents-endpoint put), `roxi resume`,
`roxi wake`, `roxi compact`, an embedder starting (its vectors need the indexer), and its
own look at the store every `embedder.wake_check_seconds` while any is suspended
(`look_for_work`: chunks pending, or for the indexer a change in what is visible, which
may make a compaction due). A role that suspended itself for want of work is looked for
at once, so a notice that reached it as it was leaving is not lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from typing import Any, Callable

import zmq

from roxi_mp import memory, protocol
from roxi_mp.config import Config
from roxi_mp.errors import BadInput
from roxi_mp.lock import DataDirLock
from roxi_mp.logs import RotatingLog, log_path
from roxi_mp.roles.base import ENV_SUPERVISOR_PID
from roxi_mp.store import Store

from . import commands
from .backups import BackupScheduler
from .boot import open_data_dir
from .child import LIVE_STATES, Child, ChildState
from .dashboard import Dashboard
from .status import StoreCounts, build_status

log = logging.getLogger("roxi.supervisor")

#: how long the loop waits for events when nothing is due, seconds
LOOP_TIMEOUT = 0.25
#: stop order: the documents endpoint first (no put lands after the indexer flushed), then
#: embedders (stop producing), then the indexer (flushes), then queries
STOP_ORDER = ("documents", "embedder", "indexer", "query")
#: states of a child that cost no CPU: the loop polls slowly when every child is in one
QUIET_STATES = (ChildState.ASLEEP, ChildState.STOPPED, ChildState.FAILED, ChildState.SUSPENDED)
#: signals the arbiter handles (queued by the handler, dispatched by the loop)
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP)


class Arbiter:
    def __init__(self, cfg: Config, *, clock: Callable[[], float] = time.monotonic,
                 popen: Callable[..., subprocess.Popen] = subprocess.Popen) -> None:
        self.cfg = cfg
        self.clock = clock
        self.popen = popen
        self.lock = DataDirLock(cfg.lock_path)
        self.children: list[Child] = []
        self.sig_queue: list[int] = []
        self.shutdown_phase: int | None = None  # index into STOP_ORDER while stopping
        self.started = clock()
        self.exit_code = 0
        self.query_served = 0
        self.documents_work = 0  # the documents role's `work` counter, as last heard
        self.store: Store | None = None
        self.backups: BackupScheduler | None = None
        self.ctx: zmq.Context | None = None
        self.control: zmq.Socket | None = None
        self.beats: zmq.Socket | None = None
        self.commands: zmq.Socket | None = None
        self.sig_r: int | None = None
        self.sig_w: int | None = None
        self.poller = zmq.Poller()  # binds nothing: children's outputs join it without sockets
        self.store_counts = StoreCounts()
        self.dashboard: Dashboard | None = None
        self.next_look = 0.0  # when to look at the store for suspended roles' work
        self.visible_at_suspend: tuple | None = None  # the store's visibility when the indexer left
        self.trimmed = False  # memory given back since every role went quiet

    # --- start -------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the data directory (AlreadyRunning if taken): before anything else is touched."""
        if self.lock.fd is None:
            self.lock.acquire()

    def start(self) -> None:
        self.acquire()
        self.store = open_data_dir(self.cfg)
        self.open_sockets()
        self.install_signals()
        now = self.clock()
        self.spawn_children(now)
        self.backups = BackupScheduler(self.cfg, self.store, now)
        log.info("supervisor %d started on %s", os.getpid(), self.cfg.data_dir)
        if self.cfg.web.enabled:
            self.dashboard = Dashboard(self)
            self.dashboard.start()

    def open_sockets(self) -> None:
        cfg = self.cfg
        self.ctx = zmq.Context()
        lim = cfg.limits
        self.control = protocol.configure(self.ctx.socket(zmq.ROUTER), hwm=lim.socket_hwm,
                                          max_message_bytes=2 * lim.max_message_bytes)
        self.control.bind(cfg.endpoint("control"))
        self.beats = protocol.configure(self.ctx.socket(zmq.PULL), hwm=lim.socket_hwm,
                                        max_message_bytes=protocol.HEARTBEAT_BYTES)
        self.beats.bind(cfg.endpoint("heartbeat"))
        self.commands = protocol.configure(self.ctx.socket(zmq.PUB), hwm=lim.socket_hwm)
        self.commands.bind(cfg.endpoint("commands"))
        for sock in (self.control, self.beats):
            self.poller.register(sock, zmq.POLLIN)

    def install_signals(self) -> None:
        self.sig_r, self.sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.sig_w, warn_on_full_buffer=False)
        for sig in SIGNALS:
            signal.signal(sig, self._queue_signal)
        self.poller.register(self.sig_r, zmq.POLLIN)

    def _queue_signal(self, signum: int, frame: object) -> None:
        self.sig_queue.append(signum)  # no logging, no I/O: the loop handles it

    # --- main loop ---------------------------------------------------------------
    def run(self) -> int:
        self.acquire()  # outside the try: a refused supervisor has nothing to clean up
        try:
            self.start()
            while not self.finished():
                self.wait()
                self.step(self.clock())
        finally:
            self.cleanup()
        return self.exit_code

    def step(self, now: float) -> None:
        """One turn of the loop after the wait: tests call it with a chosen `now`."""
        self.handle_signals()
        self.reap_children(now)
        self.kill_stalled_children(now)
        self.manage_children(now)
        self.look_for_work(now)
        if self.backups is not None:
            self.backups.manage(now, stopping=self.shutdown_phase is not None)
        self.manage_shutdown(now)
        if self.dashboard is not None:
            self.dashboard.tick(now)
        self.trim_when_quiet()

    def trim_when_quiet(self) -> None:
        """Once every role sleeps, give back what the busy spell left: SQLite's page cache
        (status counts over a million chunks fill it) and the allocator's free memory."""
        quiet = self.loop_timeout() != LOOP_TIMEOUT
        if quiet and not self.trimmed and self.store is not None:
            with contextlib.suppress(sqlite3.Error):
                self.store.conn.execute("PRAGMA shrink_memory")
            memory.release(file_pages=True)
        self.trimmed = quiet

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
                c.state in QUIET_STATES for c in self.children):
            return self.cfg.supervisor.sleep_poll_seconds
        return LOOP_TIMEOUT

    def finished(self) -> bool:
        return (self.shutdown_phase is not None and self.shutdown_phase >= len(STOP_ORDER)
                and not (self.backups is not None and self.backups.running()))

    def handle_signals(self) -> None:
        while self.sig_queue:
            signum = self.sig_queue.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self.begin_shutdown(f"signal {signal.Signals(signum).name}")

    # --- children ----------------------------------------------------------------
    def spawn_children(self, now: float) -> None:
        cfg = self.cfg
        self.children = [Child("indexer", "indexer", cfg.restart_for("indexer")),
                         Child("query", "query", cfg.restart_for("query")),
                         Child("documents", "documents", cfg.restart_for("documents"))]
        self.children += [Child("embedder", f"embedder-{i}", cfg.restart_for("embedder"))
                          for i in range(1, cfg.embedder.count + 1)]
        for child in self.children:
            self.spawn_child(child, now)

    def spawn_child(self, child: Child, now: float) -> None:
        cfg = self.cfg
        env = {**os.environ, ENV_SUPERVISOR_PID: str(os.getpid())}
        argv = [sys.executable, "-m", f"roxi_mp.roles.{child.module}", *cfg.to_argv(), "--name", child.name]
        proc = self.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=env, close_fds=True)
        os.set_blocking(proc.stdout.fileno(), False)
        self.poller.register(proc.stdout.fileno(), zmq.POLLIN)
        if child.sink is None:
            child.sink = RotatingLog(log_path(cfg.log_dir, child.name), max_bytes=cfg.supervisor.log_max_bytes,
                                     backups=cfg.supervisor.log_backups)
        child.spawned(proc, now)
        log.info("spawned %s (pid %d)", child.name, proc.pid)
        if child.kind == "embedder":
            self.resume("indexer", now, "an embedder started: its vectors need the indexer")

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
            level = logging.INFO if child.state in (ChildState.STOPPED, ChildState.SUSPENDED) else logging.WARNING
            log.log(level, "%s exited with %d -> %s", child.name, code, child.state.value)
            if child.state is ChildState.SUSPENDED:
                if child.kind == "indexer":
                    self.visible_at_suspend = tuple(self.store.visibility()) if self.store is not None else None
                # Gone for want of work: look at once (a notice may have reached it as it
                # left). Asked to sleep: look when it would have, after wake_check_seconds.
                self.next_look = now + self.cfg.embedder.wake_check_seconds if child.sleep_asked else now

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
            # A child asleep beats every sleep_heartbeat_seconds, not heartbeat_seconds.
            allowed = s.liveness_seconds + (s.sleep_heartbeat_seconds - s.heartbeat_seconds
                                            if child.state is ChildState.ASLEEP else 0.0)
            if child.state in LIVE_STATES and silent > allowed:
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
            elif child.queued and child.state in LIVE_STATES:  # asked of it while it was suspended
                for op in child.queued:
                    self.publish(child.name, op)
                child.queued = []

    def resume(self, target: str, now: float, why: str, *, then: str | None = None) -> list[Child]:
        """Start the suspended children of `target` (a kind or a name) again; `then`: a
        command each gets once ready. Returns those started."""
        if self.shutdown_phase is not None:
            return []
        chosen = [c for c in self.children if target in (c.kind, c.name) and c.state is ChildState.SUSPENDED]
        for child in chosen:
            log.info("resuming %s: %s", child.name, why)
            child.queued = [then] if then else []
            self.spawn_child(child, now)
        return chosen

    def suspended(self, kind: str | None = None) -> bool:
        """Whether a child (of `kind`) is suspended."""
        return any(c.state is ChildState.SUSPENDED and kind in (None, c.kind) for c in self.children)

    def look_for_work(self, now: float, *, force: bool = False) -> None:
        """While a role is suspended, look at the store for its work now and then: pending
        chunks (the embedders, and the indexer that commits their vectors), chunks to copy,
        or a change in what is visible since the indexer left (a delete may make a
        compaction due; the indexer decides)."""
        if self.shutdown_phase is not None or self.store is None or not (force or now >= self.next_look):
            return
        if not self.suspended():
            return
        self.next_look = now + self.cfg.embedder.wake_check_seconds
        paused = self.store.paused()
        if self.suspended("embedder") and not paused and self.store.pending_count(now=time.time()) > 0:
            self.resume("embedder", now, "chunks are pending")  # the indexer follows (spawn_child)
        if self.suspended("indexer"):
            if self.store.unfinished(paused=paused):
                self.resume("indexer", now, "chunks are on their way to rows")
            elif tuple(self.store.visibility()) != self.visible_at_suspend:
                self.resume("indexer", now, "documents changed: a compaction may be due")

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
                beat = protocol.parse_heartbeat(data)
            except protocol.ProtocolError:
                continue
            child = self.child(beat["name"])
            if child is None or child.pid != beat["pid"]:
                continue  # a beat from a previous incarnation
            if child.beat(beat, self.clock()):  # the first beat is the READY handshake
                log.info("%s ready", child.name)
            self.follow_counters(child, beat)

    def follow_counters(self, child: Child, beat: dict[str, Any]) -> None:
        """Turn a heartbeat's counters into commands: queries served make the embedders
        yield; puts that left chunks (the documents role's `work`) make them look at once.
        A restarted role counts from 0 again, so the last value heard is kept, not the most."""
        if child.kind == "query":
            served = beat.get("served", 0)
            if isinstance(served, int) and served > self.query_served:
                self.publish("embedder", "queries")  # embedders yield while queries flow
            self.query_served = served if isinstance(served, int) else 0
        elif child.kind == "documents":
            work = beat.get("work", 0)
            if isinstance(work, int) and work > self.documents_work:
                self.publish_work()
            self.documents_work = work if isinstance(work, int) else 0

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
            self.commands.send_multipart(protocol.role_command(target, op), zmq.NOBLOCK)

    def publish_work(self) -> None:
        """New chunks are pending: embedders look at once, the indexer for vectors to copy;
        suspended ones are started (embedders only if not paused: they would claim nothing)."""
        now = self.clock()
        self.resume("indexer", now, "work was added")
        if self.suspended("embedder") and (self.store is None or not self.store.paused()):
            self.resume("embedder", now, "work was added")
        self.publish("embedder", "work")
        self.publish("indexer", "work")

    def resume_processing(self) -> None:
        """`roxi resume`: suspended embedders start again if chunks are pending."""
        self.look_for_work(self.clock(), force=True)
        self.publish("embedder", "resume")

    def sleep_roles(self, target: str | None, *, wake: bool) -> list[str]:
        """Ask roles to sleep or to wake (prewarm). A suspended role asked to wake is
        started: a fresh one is awake, its model loaded. One asked to sleep that is
        suspended already has nothing more to give back."""
        chosen = self.select(target) if target else self.children
        now = self.clock()
        for child in chosen:
            if wake and child.state is ChildState.SUSPENDED:
                self.resume(child.name, now, "asked to wake")
                continue
            child.sleep_asked = not wake
            self.publish(child.name, "wake" if wake else "sleep")
        return [c.name for c in chosen]

    def stop_role(self, target: str) -> list[str]:
        """Stop by hand: never restarted automatically until `restart`."""
        now = self.clock()
        chosen = self.select(target)
        for child in chosen:
            if child.request_stop():
                self.kill_child(child, now)
        return [c.name for c in chosen]

    def restart_role(self, target: str) -> list[str]:
        """Operator restart: clears failed/stopped, replaces a running child at once."""
        if self.shutdown_phase is not None:
            raise BadInput("the supervisor is stopping")
        now = self.clock()
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

    def manage_shutdown(self, now: float) -> None:
        """Advance through STOP_ORDER: a phase ends when its children exited or were killed."""
        if self.shutdown_phase is None or self.shutdown_phase >= len(STOP_ORDER):
            return  # all phases done: finished() may still wait for a backup job to end
        if self.shutdown_phase >= 0:
            role = STOP_ORDER[self.shutdown_phase]
            alive = [c for c in self.children if c.kind == role and c.proc is not None]
            if alive:
                return  # kill_stalled_children escalates to SIGKILL at each child's kill_at
        self.shutdown_phase += 1
        if self.shutdown_phase >= len(STOP_ORDER):
            return
        role = STOP_ORDER[self.shutdown_phase]
        for child in self.children:
            if child.kind == role and child.request_stop(shutdown=True):
                self.kill_child(child, now)

    def cleanup(self) -> None:
        if self.dashboard is not None:
            self.dashboard.stop()
        if self.backups is not None:
            self.backups.kill()
        for child in self.children:  # only on an unexpected exit of the loop
            if child.proc is not None and child.proc.poll() is None:
                self.signal_child(child, signal.SIGKILL)
                child.proc.wait(timeout=5)
            if child.sink is not None:
                child.sink.close()
        for sock in (self.control, self.beats, self.commands):
            if sock is not None:
                sock.close(0)
        if self.ctx is not None:
            self.ctx.term()
        if self.store is not None:
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
        return build_status(self, self.clock())
