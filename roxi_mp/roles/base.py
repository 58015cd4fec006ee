"""The generic role process: boot, heartbeat, run `loop(now)` until told to stop.

Each role (embedder, indexer, query server) is a class with `initialize()`, `loop(now)`
and `shutdown()`. This module is the runner around it (`Runner`: boot, step, close; `run`:
the process, its signals and exit code), so that the role classes hold only their own
logic and tests can call `loop(now)`, or `Runner.step(now)`, directly with a chosen time:

- the child dies with its supervisor: PR_SET_PDEATHSIG, plus a parent-pid check for the race
  where the supervisor died before the prctl call took effect;
- SIGTERM/SIGINT only set a flag; the loop finishes its step and `shutdown()` flushes;
- a heartbeat goes to the supervisor every `heartbeat_seconds` (the first one is READY),
  and at once when the role's state changes;
- an error during `initialize()` that retrying cannot fix exits with BOOT_ERROR, so the
  supervisor stops respawning it;
- a role in deep sleep with nothing left to do sets `suspend`: the process exits with
  SUSPENDED, giving all its memory back, and the supervisor starts it again when work
  appears (issue 22: a process that unloads a model keeps tens of MB of its runtime).
"""

from __future__ import annotations

import contextlib
import argparse
import logging
import math
import os
import signal
import sys
import time
from typing import Any

import zmq

from .. import config as config_mod
from .. import protocol
from ..errors import BOOT_ERROR, SUSPENDED, ConfigError, RoxiError, StoreError
from ..process import child_parser, die_with_parent

log = logging.getLogger("roxi")

#: env var through which the supervisor tells a child its pid (for the orphan check)
ENV_SUPERVISOR_PID = "ROXI_PARENT_PID"


class Role:
    """Base class of a role; subclasses override the four hooks below."""

    #: role name as used in logs, status and endpoints
    role = "role"

    def __init__(self, cfg: config_mod.Config, ctx: zmq.Context, *, name: str | None = None) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.name = name or self.role
        self.stopping = False
        # Set by the Runner before initialize(): the supervisor's commands (a role asleep
        # polls it with its own sockets, so that a wake or a work notice ends its wait at
        # once), and when the next heartbeat is due (a role asleep waits until then).
        self.commands: zmq.Socket | None = None
        self.beat_due = 0.0
        # Set by a role to send its next heartbeat after this step rather than when due
        # (the query server's first query after a quiet spell: the embedders yield at once).
        self.beat_soon = False
        # Set by a role asleep with nothing in hand and nothing due (and supervisor.suspend
        # on): the Runner ends after this step and the process exits with SUSPENDED.
        self.suspend = False
        self.step_now = 0.0  # the `now` of the step running (the Runner's clock, maybe a test's)
        # Set by the Runner: readable once a stop signal came. A wait that polls it ends at
        # once on SIGTERM (pyzmq resumes a poll interrupted by a signal: without it a role
        # asleep would stop only when its wait ran out, seconds later).
        self.signal_fd: int | None = None
        self._idle_poller: zmq.Poller | None = None

    def initialize(self) -> None:
        """Open stores and sockets. Raise ConfigError/StoreError for a boot failure."""

    def poll_timeout(self) -> float:
        """Longest a loop step may wait, seconds: well under the heartbeat interval; asleep,
        until the next heartbeat or `next_duty()`, whichever is first. Each wakeup of an idle
        process costs about a millisecond of CPU on a small VM, so a sleeping system wakes
        as seldom as it can (its commands still end the wait at once)."""
        if self.state_name() == "asleep":
            longest = self.cfg.supervisor.sleep_heartbeat_seconds
            return min(longest, max(0.0, min(self.beat_due, self.next_duty()) - self.step_now))
        return min(0.5, self.cfg.supervisor.heartbeat_seconds / 2)

    def next_duty(self) -> float:
        """When a role asleep has something of its own to do (monotonic time; inf: nothing)."""
        return math.inf

    def watch_wakers(self, poller: zmq.Poller) -> None:
        """Register what must end a wait at once: the supervisor's commands (the Runner
        drains them after the step) and the stop signal."""
        if self.commands is not None:
            poller.register(self.commands, zmq.POLLIN)
        if self.signal_fd is not None:
            poller.register(self.signal_fd, zmq.POLLIN)

    def idle(self, timeout: float) -> None:
        """Wait `timeout` seconds, or until a command or a stop signal arrives."""
        if self._idle_poller is None:
            self._idle_poller = zmq.Poller()
            self.watch_wakers(self._idle_poller)
        self._idle_poller.poll(int(timeout * 1000))

    def loop(self, now: float) -> None:
        """One step; must return within about `poll_timeout()` seconds."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Flush and close; called once, also after a failed loop."""

    def state_name(self) -> str:
        """"starting", "running" or "asleep": asked on every loop step, so it must be cheap."""
        return "running"

    def info(self) -> dict[str, Any]:
        """Extra fields for the heartbeat (state, counters); built only when one goes out."""
        return {"state": self.state_name()}

    def command(self, msg: dict[str, Any], now: float) -> None:
        """A command from the supervisor (sleep, wake, work, queries); ignored by default."""


def _parent_alive(expected: int | None) -> bool:
    return expected is None or os.getppid() == expected


def parse_args(role: str, argv: list[str] | None) -> argparse.Namespace:
    parser = child_parser(f"roxi_mp.roles.{role}")
    parser.add_argument("--name", default=role)
    return parser.parse_args(argv)


def setup_logging(name: str) -> None:
    logging.basicConfig(level=os.environ.get("ROXI_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format=f"%(asctime)s {name}[%(process)d] %(levelname)s %(message)s")
    # faiss's loader tells at INFO which SIMD build it tried and could not load, every start.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


class Runner:
    """The loop around one role: `boot()`, then `step(now)` until it returns False, `close()`.

    Kept apart from `run` (signals, exit codes) so that tests drive `step(now)` with chosen
    times: the first heartbeat goes out at once (it is READY), then one every
    `heartbeat_seconds`, and one at once whenever the role's state changes.
    """

    def __init__(self, role: Role, *, supervisor_pid: int | None = None, signal_fd: int | None = None) -> None:
        self.role = role
        self.signal_fd = signal_fd  # readable once a stop signal came (catch_signals)
        self.supervisor_pid = supervisor_pid  # None: no supervisor to outlive
        self.beat: zmq.Socket | None = None  # PUSH to the supervisor's heartbeat socket
        self.commands: zmq.Socket | None = None  # SUB to the supervisor's command socket
        self.seq = 0  # heartbeats sent
        self.next_beat = 0.0  # due at once: the first step sends READY
        self.reported: str | None = None  # the state the last heartbeat reported
        self.said: dict[str, Any] = {}  # what the last heartbeat said

    def boot(self) -> int:
        """Connect the sockets and initialize the role: 0, or BOOT_ERROR if retrying cannot help."""
        role, cfg = self.role, self.role.cfg
        self.beat = protocol.configure(role.ctx.socket(zmq.PUSH), hwm=4)
        self.beat.connect(cfg.endpoint("heartbeat"))
        self.commands = protocol.configure(role.ctx.socket(zmq.SUB), hwm=100, max_message_bytes=protocol.COMMAND_BYTES)
        for target in ("all", role.role, role.name):
            self.commands.setsockopt(zmq.SUBSCRIBE, protocol.command_topic(target))
        self.commands.connect(cfg.endpoint("commands"))
        role.commands, role.signal_fd = self.commands, self.signal_fd
        try:
            role.initialize()
        except (ConfigError, StoreError) as exc:
            log.error("boot failed: %s", exc)
            return BOOT_ERROR
        log.info("%s ready (pid %d)", role.name, os.getpid())
        return 0

    def step(self, now: float) -> bool:
        """Heartbeat if due, one `loop(now)`, then the queued commands; False: the supervisor is gone."""
        state = self.role.state_name()
        # A state change (asleep <-> running) is reported at once, not at the next beat,
        # so that status never shows a state the role has already left. Asleep, a role
        # beats seldom, so any change in what it reports (a compaction's outcome, a count)
        # goes out at once too: its steps are few, and comparing costs one info() each.
        info = self.role.info() if state == "asleep" and state == self.reported else None
        if now >= self.next_beat or state != self.reported or self.role.beat_soon or (
                info is not None and info != self.said):
            self.role.beat_soon = False
            self.seq += 1
            self.said = info if info is not None else self.role.info()
            _send_heartbeat(self.beat, self.role, self.seq, self.said)
            self.reported = state
            sv = self.role.cfg.supervisor
            # Asleep, a role has nothing new to say: it beats seldom (the supervisor allows
            # an asleep role that much longer a silence).
            self.next_beat = now + (sv.sleep_heartbeat_seconds if state == "asleep" else sv.heartbeat_seconds)
            self.role.beat_due = self.next_beat
            if not _parent_alive(self.supervisor_pid):
                log.error("supervisor %s died; exiting", self.supervisor_pid)
                return False
        self.role.step_now = now
        self.role.loop(now)
        _drain_commands(self.commands, self.role)
        return True

    def close(self) -> bool:
        """Shut the role down (also after a failed boot or loop), close the sockets; False: shutdown failed."""
        ok = True
        try:
            self.role.shutdown()
        except Exception:
            log.exception("%s: shutdown failed", self.role.name)
            ok = False
        for sock in (self.beat, self.commands):
            if sock is not None:
                sock.close(0)
        return ok


def catch_signals(supervisor_pid: int | None) -> tuple[dict[str, bool], int]:
    """Make SIGTERM (and SIGINT without a supervisor) set the returned stop["flag"], and
    make the returned fd readable (Python's wakeup fd: a role's waits poll it)."""
    stop = {"flag": False}
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def handle_stop(signum: int, frame: object) -> None:  # only a flag: no I/O in handlers
        stop["flag"] = True

    signal.signal(signal.SIGTERM, handle_stop)
    # A write past a file size limit then fails with EFBIG, handled like a full disk,
    # instead of killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # Under a supervisor, Ctrl-C in the terminal reaches the whole process group; only the
    # supervisor may act on it, so that roles stop in order (embedders, indexer, queries).
    signal.signal(signal.SIGINT, signal.SIG_IGN if supervisor_pid else handle_stop)
    return stop, read_end


def run(role_cls: type[Role], argv: list[str] | None = None) -> int:
    """Process entry point of every role: returns the exit code."""
    args = parse_args(role_cls.role, argv)
    setup_logging(args.name)
    die_with_parent()
    supervisor_pid = int(os.environ[ENV_SUPERVISOR_PID]) if os.environ.get(ENV_SUPERVISOR_PID) else None
    if not _parent_alive(supervisor_pid):
        log.error("supervisor %s is gone before start; exiting", supervisor_pid)
        return 1
    stop, signal_fd = catch_signals(supervisor_pid)
    try:
        cfg = config_mod.load(args.config, data_dir=args.data_dir)
    except ConfigError as exc:
        log.error("boot failed: %s", exc)
        return BOOT_ERROR
    ctx = zmq.Context()
    runner = Runner(role_cls(cfg, ctx, name=args.name), supervisor_pid=supervisor_pid, signal_fd=signal_fd)
    code = 0
    try:
        code = runner.boot()
        if code == 0:
            while not stop["flag"] and runner.step(time.monotonic()) and not runner.role.suspend:
                pass
            runner.role.stopping = True
            if runner.role.suspend and not stop["flag"]:
                code = SUSPENDED
                log.info("%s suspended: nothing to do; the supervisor starts it again on work", args.name)
            else:
                log.info("%s stopping", args.name)
    except RoxiError as exc:
        log.error("%s failed: %s", args.name, exc)
        code = 1
    except Exception:
        log.exception("%s crashed", args.name)
        code = 1
    finally:
        if not runner.close():
            code = code or 1
        ctx.term()  # every socket has LINGER=0, so this cannot hang
    return code


#: commands whose sender waits for a heartbeat sent after them (service.sleep_roles): the
#: next step beats, even when nothing changed (a role asleep already, asked to sleep, would
#: otherwise make `roxi sleep` wait out its `sleep_heartbeat_seconds`)
ANSWERED_BY_A_BEAT = frozenset({"sleep", "wake"})


def _drain_commands(sock: zmq.Socket, role: Role) -> None:
    for _ in range(100):
        if not sock.get(zmq.EVENTS) & zmq.POLLIN:  # the common case, without an exception
            return
        try:
            msg = protocol.parse_role_command(sock.recv_multipart(zmq.NOBLOCK), max_bytes=protocol.COMMAND_BYTES)
        except zmq.Again:
            return
        except protocol.ProtocolError:
            continue
        role.command(msg, time.monotonic())
        if msg.get("op") in ANSWERED_BY_A_BEAT:
            role.beat_soon = True


def _send_heartbeat(sock: zmq.Socket, role: Role, seq: int, info: dict[str, Any]) -> None:
    with contextlib.suppress(zmq.Again):  # supervisor busy or gone: its watchdog judges silence
        sock.send(protocol.heartbeat(role.role, role.name, os.getpid(), seq, **info), zmq.NOBLOCK)
