"""The arbiter's loop steps with fake processes and a chosen clock: restarts, flapping,
stops by hand, operator restarts, the watchdog and the ordered shutdown, in milliseconds.

No socket is opened and no process is started: `Arbiter.step(now)` is one turn of the
main loop after its wait, the fake Popen hands out real pipes (the arbiter reads the
children's output from them) and records the signals it is sent. Heartbeats are recorded
with `Child.beat`, as the arbiter's heartbeat handler does with each one it receives.
"""

from __future__ import annotations

import itertools
import os
import signal

import pytest

from roxi_mp.errors import SUSPENDED, BadInput
from roxi_mp.store import Stats
from supervisor import commands
from supervisor.arbiter import LOOP_TIMEOUT, STOP_ORDER, Arbiter
from supervisor.child import ChildState

#: pids above the kernel's pid_max: psutil finds no such process, so status rows stay empty
FAKE_PIDS = itertools.count(5_000_000)


class FakeProc:
    """A child process that exits when the test says so, or at once on SIGKILL."""

    def __init__(self, argv: list[str], journal: list[tuple], clock: "Clock") -> None:
        self.argv = argv
        self.name = argv[argv.index("--name") + 1]
        self.pid = next(FAKE_PIDS)
        self.journal, self.clock = journal, clock
        read, self.write_fd = os.pipe()
        self.stdout = os.fdopen(read, "rb")
        self.returncode: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            raise ProcessLookupError
        self.signals.append(sig)
        self.journal.append((self.name, signal.Signals(sig).name, self.clock()))
        if sig == signal.SIGKILL:
            self.exit(-signal.SIGKILL)

    def say(self, text: bytes) -> None:
        os.write(self.write_fd, text)

    def exit(self, code: int) -> None:
        if self.write_fd is not None:
            os.close(self.write_fd)  # the arbiter reads EOF on its output
            self.write_fd = None
        self.returncode = code


class FakePopen:
    """The process factory: every spawn, in order, and one journal of signals."""

    def __init__(self, clock: "Clock") -> None:
        self.clock = clock
        self.spawned: list[FakeProc] = []
        self.journal: list[tuple] = []

    def __call__(self, argv: list[str], **options) -> FakeProc:
        assert options["stdout"] is not None  # the arbiter copies children's output to their logs
        proc = FakeProc(argv, self.journal, self.clock)
        self.spawned.append(proc)
        return proc

    def of(self, name: str) -> list[FakeProc]:
        return [p for p in self.spawned if p.name == name]

    def close(self) -> None:
        for proc in self.spawned:
            if proc.write_fd is not None:
                os.close(proc.write_fd)
            proc.stdout.close()


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeStore:
    def __init__(self) -> None:
        self.counted = 0
        self.pending, self.on_the_way, self.is_paused, self.seq = 0, False, False, 1
        self.looks = 0  # pending-count queries
        self.conn = self  # what the arbiter runs on the connection itself
        self.executed: list[str] = []

    def execute(self, sql: str):
        self.executed.append(sql)

    def paused(self) -> bool:
        return self.is_paused

    def pending_count(self, *, now: float) -> int:
        self.looks += 1
        return self.pending

    def unfinished(self, *, paused: bool = False) -> bool:
        return self.on_the_way

    def visibility(self) -> tuple:
        return (0, self.seq, 5)

    def stats(self) -> Stats:
        self.counted += 1
        return Stats(documents=2, chunks=10, pending=4, leased=1, indexed=5, failed=0, committed_rows=5)

    def close(self) -> None:
        pass


class FakeBackups:
    """The backup scheduler's face to the loop (the real one starts a backup process)."""

    def __init__(self) -> None:
        self.job_running = False
        self.stopping_seen = False

    def manage(self, now: float, *, stopping: bool) -> None:
        self.stopping_seen |= stopping

    def running(self) -> bool:
        return self.job_running

    def status(self) -> dict:
        return {"running": "scheduled" if self.job_running else None, "last": None, "taken": 0}

    def kill(self) -> None:
        self.job_running = False


class Rig:
    """An arbiter with fakes, its clock and its processes, and a loop driven by hand."""

    def __init__(self, cfg) -> None:
        cfg.log_dir.mkdir(parents=True, exist_ok=True)
        self.clock = Clock()
        self.popen = FakePopen(self.clock)
        self.arbiter = Arbiter(cfg, clock=self.clock, popen=self.popen)
        self.arbiter.store = FakeStore()
        self.arbiter.backups = FakeBackups()
        self.sent: list[tuple[str, str]] = []  # commands published to roles (no socket here)
        self.arbiter.publish = lambda target, op: self.sent.append((target, op))
        self.arbiter.spawn_children(self.clock())
        self.silent: set[str] = set()  # children that send no heartbeat (hung)

    def child(self, name: str):
        return self.arbiter.child(name)

    def proc(self, name: str) -> FakeProc:
        return self.popen.of(name)[-1]

    def row(self, name: str) -> dict:
        return next(r for r in self.arbiter.status()["roles"] if r["name"] == name)

    def run(self, seconds: float, *, tick: float = LOOP_TIMEOUT) -> None:
        """The main loop for `seconds`: beats from the live, unsilenced children, then a step."""
        end = self.clock.now + seconds
        while self.clock.now < end - 1e-9:
            self.clock.now = min(end, self.clock.now + tick)
            self.beat()
            self.arbiter.step(self.clock.now)

    def beat(self) -> None:
        for child in self.arbiter.children:
            if child.proc is not None and child.name not in self.silent:
                child.beat({"state": "running", "pid": child.pid}, self.clock.now)

    def suspend(self, *names: str) -> None:
        """The roles exit in deep sleep (SUSPENDED), then one loop step."""
        for name in names:
            self.proc(name).exit(SUSPENDED)
        self.arbiter.step(self.clock.now)

    def crash(self, name: str, code: int = -signal.SIGKILL) -> None:
        self.proc(name).exit(code)
        self.arbiter.step(self.clock.now)


@pytest.fixture
def rig(make_config):
    made: list[Rig] = []

    def make(**overrides) -> Rig:
        settings = {"embedder__count": 2, "restart__backoff_initial_seconds": 1.0,
                    "restart__backoff_max_seconds": 8.0, "restart__stable_seconds": 30.0,
                    "restart__flap_count": 100, "restart__flap_window_seconds": 60.0,
                    "supervisor__liveness_seconds": 5.0, "supervisor__grace_seconds": 3.0,
                    "supervisor__start_timeout_seconds": 20.0, **overrides}
        made.append(Rig(make_config(**settings)))
        made[-1].run(0.5)  # everyone's READY handshake
        return made[-1]

    yield make
    for r in made:
        r.popen.close()
        for child in r.arbiter.children:
            if child.sink is not None:
                child.sink.close()


def test_all_roles_spawn_and_become_ready(rig):
    r = rig()
    assert [c.name for c in r.arbiter.children] == ["indexer", "query", "documents", "embedder-1", "embedder-2"]
    assert all(c.state is ChildState.RUNNING for c in r.arbiter.children)
    assert r.proc("query").argv[1:3] == ["-m", "roxi_mp.roles.query_server"]
    assert r.proc("documents").argv[1:3] == ["-m", "roxi_mp.roles.documents"]
    r.proc("indexer").say(b"indexer ready\n")
    r.arbiter.drain_output(r.child("indexer"))  # what the loop's wait does when the pipe is readable
    assert "indexer ready" in r.child("indexer").sink.path.read_text()


def test_a_crash_backs_off_then_respawns_with_doubling_delays(rig):
    r = rig()
    for delay in (1.0, 2.0, 4.0):
        first = r.proc("embedder-1")
        r.proc("embedder-1").say(b"Traceback: boom\n")
        r.crash("embedder-1")
        assert r.child("embedder-1").state is ChildState.BACKOFF
        assert r.row("embedder-1")["state"] == "backoff"
        assert r.row("embedder-1")["restart_in"] == delay
        r.run(delay - 0.25)
        assert r.proc("embedder-1") is first, f"respawned before its {delay} s backoff"
        r.run(0.25)
        assert r.proc("embedder-1") is not first
        assert r.child("embedder-1").state is ChildState.STARTING
        r.run(0.25)
        assert r.child("embedder-1").state is ChildState.RUNNING
    assert r.row("embedder-1")["restarts"] == 3
    assert r.row("embedder-2")["restarts"] == 0 and len(r.popen.of("embedder-2")) == 1
    assert "Traceback: boom" in r.child("embedder-1").sink.path.read_text()  # its last words


def test_flapping_fails_and_is_never_respawned(rig):
    r = rig(restart__flap_count=3, restart__flap_window_seconds=60.0)
    for _ in range(2):
        r.crash("indexer")
        r.run(5.0)  # past the backoff: respawned
        assert r.child("indexer").state is ChildState.RUNNING
    r.crash("indexer")
    assert r.child("indexer").state is ChildState.FAILED
    r.run(120.0)
    assert len(r.popen.of("indexer")) == 3, "a failed role was respawned"
    row = r.row("indexer")
    assert row["state"] == "failed" and row["pid"] is None and row["exit_code"] == -signal.SIGKILL
    assert "log_tail" in row
    assert r.child("query").state is ChildState.RUNNING  # the others carry on


def test_a_manual_stop_stays_stopped_until_restart(rig):
    r = rig()
    assert r.arbiter.stop_role("embedder") == ["embedder-1", "embedder-2"]
    assert [r.row(n)["state"] for n in ("embedder-1", "embedder-2")] == ["stopping", "stopping"]
    assert r.proc("embedder-1").signals == [signal.SIGTERM]
    r.proc("embedder-1").exit(-signal.SIGTERM)
    r.proc("embedder-2").exit(1)  # any exit code: a stop by hand is never a failure
    r.run(0.25)
    assert r.row("embedder-1")["state"] == "stopped" and r.row("embedder-1")["pid"] is None
    r.run(60.0)  # far past any backoff
    assert r.row("embedder-1")["state"] == r.row("embedder-2")["state"] == "stopped"
    assert len(r.popen.of("embedder-1")) == 1 and len(r.popen.of("embedder-2")) == 1
    assert r.arbiter.stop_role("embedder-1") == ["embedder-1"]  # stopping the stopped: no-op
    assert r.arbiter.restart_role("embedder-1") == ["embedder-1"]
    assert len(r.popen.of("embedder-1")) == 2  # spawned at once, not after a backoff
    assert r.row("embedder-1")["state"] == "starting"
    r.run(0.25)
    assert r.row("embedder-1")["state"] == "running" and r.row("embedder-1")["restarts"] == 1
    assert r.row("embedder-2")["state"] == "stopped"


def test_a_manual_stop_kills_a_child_that_ignores_sigterm(rig):
    r = rig()
    r.arbiter.stop_role("query")
    r.run(2.75)
    assert r.proc("query").signals == [signal.SIGTERM]
    r.run(0.5)  # the 3 s grace is over
    assert r.proc("query").signals == [signal.SIGTERM, signal.SIGKILL]
    assert r.row("query")["state"] == "stopped"
    r.run(30.0)
    assert len(r.popen.of("query")) == 1


def test_an_operator_restart_replaces_a_running_child_and_forgets_failures(rig):
    r = rig(restart__flap_count=2)
    r.crash("query")  # one failure: the next one would be flapping
    r.run(1.0)
    old = r.proc("query")
    assert r.arbiter.restart_role("query") == ["query"]
    assert old.signals == [signal.SIGTERM]
    assert r.row("query")["state"] == "stopping" and r.row("query")["pid"] == old.pid
    r.run(1.0)
    assert r.proc("query") is old  # no second process while the first is still there
    old.exit(-signal.SIGTERM)
    r.run(0.25)  # reaped and respawned in the same turn: no backoff
    assert r.proc("query") is not old and r.row("query")["state"] == "starting"
    r.run(0.25)
    assert r.row("query")["state"] == "running"
    assert r.row("query")["restarts"] == 2
    r.crash("query")  # counted from zero again: backoff, not failed
    assert r.child("query").state is ChildState.BACKOFF


def test_an_operator_restart_kills_a_child_that_ignores_sigterm(rig):
    r = rig()
    old = r.proc("embedder-2")
    r.arbiter.restart_role("embedder-2")
    r.run(2.75)
    assert old.signals == [signal.SIGTERM] and r.proc("embedder-2") is old
    r.run(0.75)  # SIGKILL at the end of the 3 s grace, reaped, respawned at once, ready
    assert old.signals == [signal.SIGTERM, signal.SIGKILL]
    assert r.proc("embedder-2") is not old and r.row("embedder-2")["state"] == "running"


def test_restart_clears_failed(rig):
    r = rig(restart__flap_count=1)
    r.crash("indexer")
    assert r.row("indexer")["state"] == "failed"
    r.arbiter.restart_role("indexer")
    r.run(0.25)
    assert r.row("indexer")["state"] == "running" and len(r.popen.of("indexer")) == 2


def test_restart_of_an_unknown_role_or_while_stopping_is_refused(rig):
    r = rig()
    with pytest.raises(BadInput, match="no role 'nonsense'"):
        r.arbiter.restart_role("nonsense")
    r.arbiter.begin_shutdown("test")
    with pytest.raises(BadInput, match="stopping"):
        r.arbiter.restart_role("query")


def test_a_hung_child_is_terminated_then_killed_after_the_grace(rig):
    r = rig()  # liveness 5 s, grace 3 s
    hung = r.proc("indexer")
    r.silent.add("indexer")
    last_beat = r.clock.now
    r.run(5.0)
    assert hung.signals == []  # silent for exactly the liveness: not yet
    r.run(0.25)
    assert hung.signals == [signal.SIGTERM]
    term_at = r.clock.now
    assert term_at == last_beat + 5.25
    r.run(2.75)
    assert hung.signals == [signal.SIGTERM]
    r.silent.discard("indexer")  # a late beat does not cancel the kill
    r.run(0.25)
    assert hung.signals == [signal.SIGTERM, signal.SIGKILL]
    assert ("indexer", "SIGKILL", term_at + 3.0) in r.popen.journal
    r.run(0.25)
    assert r.child("indexer").state is ChildState.BACKOFF  # a hang counts as a failure
    r.run(1.25)
    assert r.proc("indexer") is not hung and r.row("indexer")["state"] == "running"
    assert all(p.signals == [] for p in r.popen.spawned if p.name != "indexer")


def test_a_child_asleep_may_be_silent_for_its_longer_heartbeat_interval(rig):
    r = rig(supervisor__heartbeat_seconds=1.0, supervisor__sleep_heartbeat_seconds=10.0)
    child = r.child("indexer")
    child.beat({"state": "asleep", "pid": child.pid}, r.clock.now)
    r.silent.add("indexer")
    r.run(14.0)  # liveness 5 s + 9 s more of the asleep interval: not yet hung
    assert r.proc("indexer").signals == [] and child.state is ChildState.ASLEEP
    r.run(0.25)
    assert r.proc("indexer").signals == [signal.SIGTERM]


def test_a_child_that_never_gets_ready_is_terminated(rig):
    r = rig()
    r.silent.add("embedder-2")
    r.crash("embedder-2")
    r.run(1.0)
    assert r.row("embedder-2")["state"] == "starting"
    r.run(20.0)
    assert r.proc("embedder-2").signals == []
    r.run(0.25)  # past start_timeout_seconds = 20
    assert r.proc("embedder-2").signals == [signal.SIGTERM]


def test_shutdown_stops_documents_then_embedders_then_the_indexer_then_queries(rig):
    r = rig()
    r.arbiter.sig_queue.append(signal.SIGTERM)  # what the signal handler does
    r.run(0.25)
    assert r.arbiter.status()["supervisor"]["state"] == "stopping"
    # The documents endpoint first: no put lands after the indexer flushed.
    assert [(n, s) for n, s, _ in r.popen.journal] == [("documents", "SIGTERM")]
    assert r.proc("embedder-1").signals == []
    r.proc("documents").exit(0)
    r.run(0.25)
    assert [(n, s) for n, s, _ in r.popen.journal][1:] == [("embedder-1", "SIGTERM"), ("embedder-2", "SIGTERM")]
    assert [r.row(n)["state"] for n in ("embedder-1", "indexer", "query")] == ["stopping", "running", "running"]
    r.proc("embedder-1").exit(-signal.SIGTERM)
    r.run(2.0)  # embedder-2 ignores SIGTERM: the indexer waits for it
    assert r.proc("indexer").signals == []
    r.run(1.5)  # the grace is over: SIGKILL, and only then the indexer
    r.proc("indexer").exit(0)  # the indexer exits at once (its flush done)
    r.run(0.5)
    assert r.proc("query").signals == [signal.SIGTERM]
    assert not r.arbiter.finished()
    r.proc("query").exit(0)
    r.run(0.25)
    assert r.arbiter.finished()
    assert [(n, s) for n, s, _ in r.popen.journal] == [
        ("documents", "SIGTERM"), ("embedder-1", "SIGTERM"), ("embedder-2", "SIGTERM"), ("embedder-2", "SIGKILL"),
        ("indexer", "SIGTERM"), ("query", "SIGTERM")]
    kill_at = next(t for n, s, t in r.popen.journal if s == "SIGKILL")
    assert kill_at == next(t for n, s, t in r.popen.journal if n == "embedder-2") + 3.0
    assert all(c.state is ChildState.STOPPED for c in r.arbiter.children)
    assert len(r.popen.spawned) == 5, "a child was respawned during the shutdown"


def test_the_shutdown_ends_after_a_running_backup(rig):
    r = rig()
    r.arbiter.backups.job_running = True
    r.arbiter.begin_shutdown("test")
    for proc in r.popen.spawned:
        proc.exit(0)
    r.run(2.0)
    assert r.arbiter.backups.stopping_seen  # told to stop its job
    assert not r.arbiter.finished() and r.arbiter.shutdown_phase == len(STOP_ORDER)
    r.arbiter.backups.job_running = False
    assert r.arbiter.finished()


def test_shutdown_leaves_a_failed_child_failed_and_does_not_wait_for_it(rig):
    r = rig(restart__flap_count=1)
    r.crash("indexer")
    r.arbiter.begin_shutdown("test")
    r.run(0.25)
    for name in ("documents", "embedder-1", "embedder-2"):
        r.proc(name).exit(0)
    r.run(0.75)  # a loop turn for each phase: documents, embedders, the (failed) indexer
    assert r.row("indexer")["state"] == "failed"
    assert r.proc("query").signals == [signal.SIGTERM]


def test_a_crash_during_shutdown_is_not_respawned(rig):
    r = rig()
    r.arbiter.begin_shutdown("test")
    r.run(0.25)
    r.crash("query")  # not its turn yet, but it died
    r.run(10.0)
    assert r.row("query")["state"] == "stopped" and len(r.popen.of("query")) == 1


def test_a_child_in_backoff_when_the_shutdown_begins_is_not_respawned(rig):
    r = rig()
    r.crash("query")  # due again in 1 s, while the documents role and embedders take their 3 s grace
    assert r.child("query").state is ChildState.BACKOFF
    r.arbiter.begin_shutdown("test")
    r.run(13.0)
    assert r.row("query")["state"] == "stopped" and len(r.popen.of("query")) == 1
    assert r.arbiter.finished()


def test_the_loop_polls_slowly_only_while_every_role_sleeps(rig):
    r = rig()
    for child in r.arbiter.children:
        child.beat({"state": "asleep"}, r.clock.now)
    assert r.arbiter.loop_timeout() == r.arbiter.cfg.supervisor.sleep_poll_seconds
    r.child("query").beat({"state": "running"}, r.clock.now)
    assert r.arbiter.loop_timeout() == LOOP_TIMEOUT


def test_cleanup_of_an_arbiter_that_never_started(make_config):
    Arbiter(make_config()).cleanup()  # every attribute exists from __init__: nothing to probe


# --- suspended roles (issue 22) --------------------------------------------------------
SLEEPERS = ("indexer", "embedder-1", "embedder-2")


def spawns(r: Rig, name: str) -> int:
    return len(r.popen.of(name))


def test_a_suspended_exit_is_neither_a_failure_nor_a_stop(rig):
    r = rig()
    r.suspend(*SLEEPERS)
    r.run(60.0)  # far past any backoff: nothing is respawned without work
    for name in SLEEPERS:
        row = r.row(name)
        assert r.child(name).state is ChildState.SUSPENDED and spawns(r, name) == 1
        assert row["state"] == "suspended" and row["pid"] is None and row["restarts"] == 0
        assert row["suspended_seconds"] == pytest.approx(60.0, abs=0.5) and row["suspended_since"] > 0
    for name in ("query", "documents"):
        r.child(name).beat({"state": "asleep"}, r.clock.now)
    assert r.arbiter.loop_timeout() == r.arbiter.cfg.supervisor.sleep_poll_seconds  # the system costs no CPU


def test_the_moment_a_role_was_suspended_is_never_reported_later_than_it_was(rig):
    r = rig()
    r.suspend(*SLEEPERS)
    r.run(1.0)
    r.child(SLEEPERS[0]).suspended_since = 1_795_781_844.06  # rounded, it was .1: in the future
    assert r.row(SLEEPERS[0])["suspended_since"] == 1_795_781_844.0


def test_work_resumes_the_suspended_embedders_and_the_indexer(rig):
    r = rig()
    r.suspend(*SLEEPERS)
    commands.dispatch(r.arbiter, {"op": "notify", "event": "work"})
    r.run(0.5)
    for name in SLEEPERS:
        assert spawns(r, name) == 2 and r.child(name).state is ChildState.RUNNING
        assert r.row(name)["restarts"] == 0 and r.row(name)["resumes"] == 1


def test_work_while_paused_resumes_only_the_indexer(rig):
    r = rig()
    r.suspend(*SLEEPERS)
    r.arbiter.store.is_paused = True
    commands.dispatch(r.arbiter, {"op": "notify", "event": "work"})
    assert spawns(r, "indexer") == 2  # chunks to copy are the indexer's, paused or not
    assert spawns(r, "embedder-1") == spawns(r, "embedder-2") == 1
    r.arbiter.store.is_paused, r.arbiter.store.pending = False, 3
    commands.dispatch(r.arbiter, {"op": "notify", "event": "resume"})  # `roxi resume`
    assert spawns(r, "embedder-1") == spawns(r, "embedder-2") == 2


def test_the_store_is_looked_at_for_pending_chunks_while_suspended(rig):
    r = rig()
    r.suspend(*SLEEPERS)  # gone for want of work: looked for at once, nothing found
    looks = r.arbiter.store.looks
    assert looks >= 1
    r.arbiter.store.pending = 3  # added behind the supervisor's back (no notice)
    r.run(r.arbiter.cfg.embedder.wake_check_seconds - 1.0)
    assert spawns(r, "embedder-1") == 1 and r.arbiter.store.looks == looks  # not yet due
    r.run(1.5)
    assert spawns(r, "embedder-1") == spawns(r, "embedder-2") == spawns(r, "indexer") == 2


def test_a_notice_that_reached_a_leaving_role_is_not_lost(rig):
    r = rig()
    r.arbiter.store.pending = 2  # a put landed as the embedder decided it had nothing to do
    r.suspend("embedder-1")
    assert spawns(r, "embedder-1") == 2


def test_a_role_asked_to_sleep_is_looked_for_only_after_wake_check_seconds(rig):
    r = rig()
    r.arbiter.store.pending = 5  # `roxi sleep` in the middle of an ingest
    r.arbiter.sleep_roles(None, wake=False)
    r.suspend("embedder-1", "embedder-2")
    r.run(r.arbiter.cfg.embedder.wake_check_seconds - 1.0)
    assert spawns(r, "embedder-1") == 1  # asleep as asked, for now
    r.run(1.5)
    assert spawns(r, "embedder-1") == 2  # as an embedder asleep in memory would have woken


def test_the_indexer_is_resumed_for_chunks_on_their_way_or_a_visible_change(rig):
    r = rig()
    r.suspend("indexer")
    wait = r.arbiter.cfg.embedder.wake_check_seconds + 0.5
    r.run(wait)
    assert spawns(r, "indexer") == 1
    r.arbiter.store.seq += 1  # a delete: a compaction may be due, the indexer decides
    r.run(wait)
    assert spawns(r, "indexer") == 2
    r.run(0.5)
    r.suspend("indexer")
    r.arbiter.store.on_the_way = True  # e.g. chunks to copy
    r.run(wait)
    assert spawns(r, "indexer") == 3


def test_an_embedder_started_by_hand_brings_the_indexer_back(rig):
    r = rig()
    r.suspend(*SLEEPERS)
    r.arbiter.restart_role("embedder-2")
    assert spawns(r, "embedder-2") == 2 and spawns(r, "indexer") == 2  # its vectors need a committer
    assert spawns(r, "embedder-1") == 1


def test_wake_starts_suspended_roles_and_stop_and_restart_keep_their_rules(rig):
    r = rig()
    sent = r.sent
    r.suspend(*SLEEPERS)
    assert r.arbiter.sleep_roles("embedder-1", wake=True) == ["embedder-1"]
    assert spawns(r, "embedder-1") == 2 and ("embedder-1", "wake") not in sent  # a fresh one is awake
    assert r.arbiter.stop_role("embedder-2") == ["embedder-2"]
    assert r.child("embedder-2").state is ChildState.STOPPED  # stopped by hand: work does not start it
    r.arbiter.store.pending = 4
    r.run(r.arbiter.cfg.embedder.wake_check_seconds + 0.5)
    assert spawns(r, "embedder-2") == 1 and r.child("embedder-2").state is ChildState.STOPPED
    r.arbiter.restart_role("embedder-2")
    assert spawns(r, "embedder-2") == 2


def test_compact_starts_a_suspended_indexer_and_asks_it_once_ready(rig):
    r = rig()
    sent = r.sent
    store = r.arbiter.store
    store.dead_rows, store.committed_rows, store.model = (lambda: 3), (lambda: 10), (lambda: ("m", 8))
    r.suspend("indexer")
    reply = commands.dispatch(r.arbiter, {"op": "compact"})
    assert reply["started"] and spawns(r, "indexer") == 2 and ("indexer", "compact") not in sent
    r.run(0.5)  # READY: then it is asked
    assert sent.count(("indexer", "compact")) == 1
    assert not commands.dispatch(r.arbiter, {"op": "compact"})["started"]  # no second one


def test_shutdown_stops_suspended_roles_at_once(rig):
    r = rig()
    r.suspend(*SLEEPERS)
    r.arbiter.begin_shutdown("test")
    r.run(2.0)
    for name in ("documents", "query"):
        if r.child(name).proc is not None:
            r.proc(name).exit(0)
    r.run(1.0)
    assert r.arbiter.finished()
    assert all(c.state is ChildState.STOPPED for c in r.arbiter.children)
    assert all(spawns(r, name) == 1 for name in SLEEPERS)


def test_once_every_role_is_quiet_the_supervisor_gives_memory_back_once(rig):
    r = rig()
    r.suspend(*SLEEPERS)
    for name in ("query", "documents"):
        r.child(name).beat({"state": "asleep"}, r.clock.now)
    r.arbiter.step(r.clock.now)
    r.arbiter.step(r.clock.now)
    assert r.arbiter.store.executed == ["PRAGMA shrink_memory"]  # once per quiet spell
    r.child("query").beat({"state": "running"}, r.clock.now)
    r.arbiter.step(r.clock.now)
    r.child("query").beat({"state": "asleep"}, r.clock.now)
    r.arbiter.step(r.clock.now)
    assert r.arbiter.store.executed == ["PRAGMA shrink_memory"] * 2
