"""The restart policy of one child, driven with chosen times (no processes)."""

from __future__ import annotations

import pytest

from roxi_mp.config import RestartSettings
from roxi_mp.errors import BOOT_ERROR
from supervisor.child import Child, ChildState


class FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid = pid


def make_child(**policy) -> Child:
    settings = RestartSettings(**{"backoff_initial_seconds": 1.0, "backoff_max_seconds": 8.0,
                                  "stable_seconds": 30.0, "flap_count": 100,
                                  "flap_window_seconds": 60.0, **policy})
    return Child("embedder", "embedder-1", settings)


def crash(child: Child, *, at: float, ran: float = 1.0, code: int = -9) -> None:
    child.spawned(FakeProc(1000 + int(at)), at - ran)
    child.exited(code, at, shutting_down=False)


def test_backoff_doubles_up_to_the_cap():
    child = make_child()
    delays = []
    for i in range(6):
        crash(child, at=100.0 + i * 10)
        assert child.state is ChildState.BACKOFF
        delays.append(child.next_start - (100.0 + i * 10))
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_a_stable_run_resets_the_backoff():
    child = make_child()
    for i in range(4):
        crash(child, at=100.0 + i)
    assert child.backoff == 8.0
    crash(child, at=500.0, ran=31.0)  # ran longer than stable_seconds
    assert child.backoff == 1.0 and child.next_start == 501.0


def test_flapping_marks_failed_and_stops_restarting():
    child = make_child(flap_count=3, flap_window_seconds=10.0)
    crash(child, at=100.0)
    crash(child, at=103.0)
    assert child.state is ChildState.BACKOFF
    crash(child, at=106.0)
    assert child.state is ChildState.FAILED


def test_failures_outside_the_window_do_not_count():
    child = make_child(flap_count=3, flap_window_seconds=10.0)
    for at in (100.0, 115.0, 130.0, 145.0):
        crash(child, at=at)
        assert child.state is ChildState.BACKOFF


def test_boot_error_fails_at_once():
    child = make_child()
    crash(child, at=100.0, code=BOOT_ERROR)
    assert child.state is ChildState.FAILED


@pytest.mark.parametrize("code", [0, 1, -9, -15, BOOT_ERROR])
def test_manual_stop_is_never_restarted(code):
    child = make_child(flap_count=1)
    child.spawned(FakeProc(1), 99.0)
    assert child.request_stop() is True  # a process to signal
    assert child.state is ChildState.STOPPING
    child.exited(code, 100.0, shutting_down=False)
    assert child.state is ChildState.STOPPED and not child.failures


def test_stop_without_a_process_is_stopped_at_once_but_shutdown_keeps_failed():
    child = make_child(flap_count=1)
    crash(child, at=100.0)
    assert child.state is ChildState.FAILED
    assert child.request_stop(shutdown=True) is False
    assert child.state is ChildState.FAILED  # the last status still says why
    assert child.request_stop() is False
    assert child.state is ChildState.STOPPED


def test_exit_during_shutdown_is_stopped_not_failed():
    child = make_child(flap_count=1)
    child.spawned(FakeProc(1), 0.0)
    child.exited(-9, 1.0, shutting_down=True)
    assert child.state is ChildState.STOPPED


def test_operator_restart_counts_no_failure_and_respawns_at_once():
    child = make_child(flap_count=2)
    crash(child, at=100.0)
    child.spawned(FakeProc(2), 100.5)
    assert child.request_restart() is True  # a live process: stop it first
    assert child.state is ChildState.RESTARTING
    assert child.status(100.6)["state"] == "stopping"  # clients see only the states they know
    child.exited(-15, 101.0, shutting_down=False)
    assert child.state is ChildState.BACKOFF and child.next_start == 101.0
    assert len(child.failures) == 0


def test_restart_during_shutdown_ends_stopped():
    child = make_child()
    child.spawned(FakeProc(1), 0.0)
    child.request_restart()
    child.exited(-15, 1.0, shutting_down=True)
    assert child.state is ChildState.STOPPED


def test_restart_of_a_manual_stop_in_progress_respawns():
    child = make_child()
    child.spawned(FakeProc(1), 0.0)
    child.request_stop()
    child.request_restart()
    child.exited(-15, 1.0, shutting_down=False)
    assert child.state is ChildState.BACKOFF and child.next_start == 1.0


def test_restarts_count_spawns_after_an_exit():
    child = make_child()
    crash(child, at=10.0)  # the first spawn is no restart
    assert child.restarts == 0
    crash(child, at=20.0)
    crash(child, at=30.0)
    assert child.restarts == 2


def test_reset_clears_failed():
    child = make_child(flap_count=1)
    crash(child, at=100.0)
    assert child.state is ChildState.FAILED
    assert child.request_restart() is False  # no process: the caller spawns at once
    assert child.backoff == 0.0 and not child.failures and child.next_start == 0.0


def test_heartbeat_is_the_ready_handshake_and_carries_sleep():
    child = make_child()
    child.spawned(FakeProc(1), 0.0)
    assert child.state is ChildState.STARTING
    assert child.beat({"state": "running"}, 1.0) is True
    assert child.state is ChildState.RUNNING
    assert child.beat({"state": "asleep"}, 2.0) is False
    assert child.state is ChildState.ASLEEP
    child.beat({"state": "running"}, 3.0)
    assert child.state is ChildState.RUNNING and child.last_beat == 3.0


def test_a_stopping_child_is_not_revived_by_a_late_beat():
    child = make_child()
    child.spawned(FakeProc(1), 0.0)
    child.request_stop()
    child.beat({"state": "running"}, 1.0)
    assert child.state is ChildState.STOPPING
    child.request_restart()
    child.beat({"state": "running"}, 2.0)
    assert child.state is ChildState.RESTARTING
