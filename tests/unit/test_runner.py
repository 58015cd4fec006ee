"""The role runner's rules, driven through `Runner.step(now)` with chosen times.

A fake role records its `loop(now)` calls and reports whatever state the test sets; the
runner's real sockets connect to a PULL (heartbeats) and a PUB (commands) that the test
binds on the config's ipc endpoints, as the supervisor does.
"""

from __future__ import annotations

import os
import time
from typing import Iterator

import pytest
import zmq

from roxi_mp import protocol
from roxi_mp.errors import BOOT_ERROR, StoreError
from roxi_mp.roles.base import Role, Runner
from tests.conftest import PATIENCE

#: heartbeat interval of the tests' config, seconds
BEAT = 1.0
#: heartbeat interval of a role asleep in the tests' config, seconds
SLEEP_BEAT = 10.0
#: longest wait for a heartbeat already sent to arrive over ipc, ms (only a failure waits it)
ARRIVAL_MS = 2000


class FakeRole(Role):
    role = "fake"

    def __init__(self, cfg, ctx, *, boot_error: Exception | None = None, shutdown_error: bool = False) -> None:
        super().__init__(cfg, ctx, name="fake-1")
        self.state = "starting"
        self.boot_error = boot_error
        self.shutdown_error = shutdown_error
        self.loops: list[float] = []
        self.received: list[dict] = []
        self.shutdowns = 0
        self.count = 0  # a counter the heartbeat reports

    def initialize(self) -> None:
        if self.boot_error is not None:
            raise self.boot_error
        self.state = "running"

    def loop(self, now: float) -> None:
        self.loops.append(now)

    def state_name(self) -> str:
        return self.state

    def info(self) -> dict:
        return {"state": self.state, "count": self.count}

    def command(self, msg: dict, now: float) -> None:
        self.received.append(msg)

    def shutdown(self) -> None:
        self.shutdowns += 1
        if self.shutdown_error:
            raise RuntimeError("shutdown failed")


class Supervisor:
    """The supervisor's side of the two sockets."""

    def __init__(self, cfg, ctx: zmq.Context) -> None:
        self.beats = protocol.configure(ctx.socket(zmq.PULL), hwm=100)
        self.beats.bind(cfg.endpoint("heartbeat"))
        self.commands = protocol.configure(ctx.socket(zmq.PUB), hwm=100)
        self.commands.bind(cfg.endpoint("commands"))

    def take_beats(self, n: int) -> list[dict]:
        """Exactly the n heartbeats sent so far (fails on fewer, or on one more)."""
        got = []
        for _ in range(n):
            assert self.beats.poll(ARRIVAL_MS, zmq.POLLIN), f"heartbeat {len(got) + 1} of {n} never came"
            got.append(protocol.unpack_map(self.beats.recv_multipart()[-1], max_bytes=1 << 20))
        assert not self.beats.poll(50, zmq.POLLIN), "one heartbeat more than expected"
        return got

    def close(self) -> None:
        self.beats.close(0)
        self.commands.close(0)


@pytest.fixture
def cfg(make_config):
    cfg = make_config(supervisor__heartbeat_seconds=BEAT, supervisor__sleep_heartbeat_seconds=SLEEP_BEAT)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    cfg.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def sup(cfg, ctx) -> Iterator[Supervisor]:
    sup = Supervisor(cfg, ctx)
    yield sup
    sup.close()


@pytest.fixture
def booted(cfg, ctx, sup) -> Iterator[tuple[Runner, FakeRole]]:
    role = FakeRole(cfg, ctx)
    runner = Runner(role, supervisor_pid=os.getppid())
    assert runner.boot() == 0 and role.state == "running"
    yield runner, role
    runner.close()


def test_the_first_step_beats_at_once_and_runs_the_role(booted, sup) -> None:
    runner, role = booted
    assert runner.step(1000.0) is True
    assert role.loops == [1000.0] and runner.seq == 1
    [beat] = sup.take_beats(1)
    assert (beat["name"], beat["role"], beat["seq"], beat["state"]) == ("fake-1", "fake", 1, "running")


def test_a_role_asking_for_a_beat_soon_gets_one_at_the_next_step(booted, sup) -> None:
    runner, role = booted
    runner.step(1000.0)
    runner.step(1000.1)
    assert runner.seq == 1
    role.beat_soon = True  # as the query server after a quiet spell
    runner.step(1000.2)
    assert runner.seq == 2 and role.beat_soon is False
    runner.step(1000.3)
    assert runner.seq == 2  # once: then the interval again
    assert [b["seq"] for b in sup.take_beats(2)] == [1, 2]


def test_a_beat_at_each_interval_and_none_in_between(booted, sup) -> None:
    runner, role = booted
    for now in (1000.0, 1000.5, 1000.99):
        runner.step(now)
    assert runner.seq == 1
    runner.step(1000.0 + BEAT)
    assert runner.seq == 2
    for now in (1001.5, 1001.9):
        runner.step(now)
    assert runner.seq == 2
    runner.step(1002.0)
    assert runner.seq == 3 and role.loops == [1000.0, 1000.5, 1000.99, 1001.0, 1001.5, 1001.9, 1002.0]
    assert [b["seq"] for b in sup.take_beats(3)] == [1, 2, 3]


def test_a_state_change_beats_at_once_then_the_interval_restarts(booted, sup) -> None:
    runner, role = booted
    runner.step(1000.0)
    role.state = "asleep"
    runner.step(1000.25)  # well before the interval: the change goes out now
    runner.step(1000.5)  # the same state: nothing more
    runner.step(1001.125)  # an interval after the first beat, but not after the change
    runner.step(1001.25)  # an awake interval after the change: asleep, a role beats seldom
    runner.step(1010.0)
    assert runner.seq == 2
    runner.step(1000.25 + SLEEP_BEAT)
    assert runner.seq == 3
    assert [b["state"] for b in sup.take_beats(3)] == ["running", "asleep", "asleep"]
    role.state = "running"
    runner.step(1010.5)
    assert runner.seq == 4
    runner.step(1011.5)
    assert runner.seq == 5  # awake again: one beat per BEAT
    assert [b["state"] for b in sup.take_beats(2)] == ["running", "running"]


def test_a_role_asleep_reports_a_change_at_once(booted, sup) -> None:
    runner, role = booted
    runner.step(1000.0)
    role.state = "asleep"
    runner.step(1000.25)
    runner.step(1001.5)
    assert runner.seq == 2  # asleep, nothing new: no beat
    role.count = 1  # e.g. a compaction's outcome, while asleep
    runner.step(1002.0)
    assert runner.seq == 3
    runner.step(1003.0)
    assert runner.seq == 3
    assert [b["count"] for b in sup.take_beats(3)] == [0, 0, 1]


def test_a_role_asleep_waits_until_its_next_beat_or_duty(booted) -> None:
    runner, role = booted
    runner.step(1000.0)
    assert role.poll_timeout() == min(0.5, BEAT / 2)  # awake: well under the interval
    role.state = "asleep"
    runner.step(1000.25)
    assert role.beat_due == 1000.25 + SLEEP_BEAT
    assert role.commands is runner.commands  # a role polls it too: a command ends the wait


def test_a_dead_parent_stops_the_loop_at_the_next_beat(booted, sup) -> None:
    runner, role = booted
    assert runner.step(1000.0) is True
    runner.supervisor_pid = os.getppid() + 1  # our parent is no longer the supervisor
    assert runner.step(1000.5) is True  # checked with each heartbeat
    assert runner.step(1001.0) is False
    assert role.loops == [1000.0, 1000.5]  # the role does not run a step after that


def test_an_orphan_stops_at_the_first_step(cfg, ctx, sup) -> None:
    role = FakeRole(cfg, ctx)
    runner = Runner(role, supervisor_pid=os.getppid() + 1)
    try:
        assert runner.boot() == 0
        assert runner.step(1000.0) is False and role.loops == []
    finally:
        runner.close()


def test_commands_for_this_role_reach_it(booted, sup) -> None:
    runner, role = booted
    # A SUB sees messages only once its subscription has reached the PUB: resend until then
    # (a few ms; a deadline for a loaded machine, not a count of attempts).
    deadline = time.monotonic() + PATIENCE
    attempt = 0
    while not role.received and time.monotonic() < deadline:
        sup.commands.send_multipart([protocol.command_topic("other"),  # another role's
                                     protocol.pack({"v": protocol.VERSION, "op": "sleep"})])
        sup.commands.send_multipart([protocol.command_topic("fake-1"),
                                     protocol.pack({"v": protocol.VERSION, "op": "wake"})])
        runner.step(1000.0 + attempt / 1024)
        attempt += 1
        if not role.received:
            time.sleep(0.01)
    assert role.received and {m["op"] for m in role.received} == {"wake"}


def test_sleep_and_wake_are_answered_by_a_beat_even_when_nothing_changes(booted, sup) -> None:
    """`roxi sleep` waits for a heartbeat sent after its request: a role asleep already
    beats at its next step, not after `sleep_heartbeat_seconds`; other commands do not."""
    runner, role = booted
    role.state = "asleep"
    runner.step(1000.0)
    sup.take_beats(1)
    deadline = time.monotonic() + PATIENCE  # resent until the subscription has reached the PUB
    while not role.received and time.monotonic() < deadline:
        sup.commands.send_multipart([protocol.command_topic("fake-1"), protocol.pack({"v": protocol.VERSION, "op": "work"})])
        runner.step(1000.1)
        time.sleep(0.01)
    assert role.received and runner.seq == 1  # asleep, nothing changed: no beat for "work"
    for op in ("sleep", "wake"):
        received = len(role.received)
        sup.commands.send_multipart([protocol.command_topic("fake-1"), protocol.pack({"v": protocol.VERSION, "op": op})])
        deadline = time.monotonic() + PATIENCE
        while len(role.received) == received and time.monotonic() < deadline:
            runner.step(1000.2)
            time.sleep(0.01)
        seq = runner.seq
        runner.step(1000.3)  # well within SLEEP_BEAT
        assert runner.seq == seq + 1, op
        assert sup.take_beats(1)[0]["state"] == "asleep"


def test_a_store_error_at_boot_is_a_boot_error_and_close_still_shuts_down(cfg, ctx, sup) -> None:
    role = FakeRole(cfg, ctx, boot_error=StoreError("database is locked"))
    runner = Runner(role, supervisor_pid=os.getppid())
    assert runner.boot() == BOOT_ERROR
    assert runner.close() is True and role.shutdowns == 1
    assert runner.beat.closed and runner.commands.closed


def test_close_reports_a_failed_shutdown(cfg, ctx, sup) -> None:
    role = FakeRole(cfg, ctx, shutdown_error=True)
    runner = Runner(role)
    assert runner.boot() == 0
    assert runner.close() is False and runner.beat.closed and runner.commands.closed
