"""Each control command through `commands.dispatch`, against an arbiter with fake processes
and a chosen clock (the rig of test_arbiter.py), bad input included.

Commands to roles are recorded at `Arbiter.publish(target, op)`: what travels on the wire
is the protocol module's business (tests/unit/test_protocol.py).
"""

from __future__ import annotations

import os
import signal

import pytest

from roxi_mp.errors import BadInput, RoxiError
from supervisor import commands

from .test_arbiter import rig  # noqa: F401  (the fixture)

EMBEDDERS = ["embedder-1", "embedder-2"]


@pytest.fixture
def r(rig):  # noqa: F811
    made = rig()
    made.published = []
    made.arbiter.publish = lambda target, op: made.published.append((target, op))
    return made


def run(r, op: str, **fields):
    return commands.dispatch(r.arbiter, {"op": op, **fields})


def test_every_command_module_is_registered():
    assert sorted(commands.COMMANDS) == ["compact", "notify", "ping", "restart", "sleep", "status", "stop", "wake"]
    assert all(m.HELP for m in commands.COMMANDS.values())


def test_ping(r):
    assert run(r, "ping") == {"pong": True}


@pytest.mark.parametrize("msg", [{"op": "fly"}, {}, {"op": 5}, {"op": None}])
def test_an_unknown_command_is_refused_with_the_known_ones(r, msg):
    with pytest.raises(RoxiError, match="unknown command") as err:
        commands.dispatch(r.arbiter, msg)
    assert "ping" in str(err.value) and "status" in str(err.value)


def test_status_rows_and_cached_store_counts(r):
    answer = run(r, "status")
    assert answer["supervisor"]["pid"] == os.getpid() and answer["supervisor"]["state"] == "running"
    assert answer["supervisor"]["uptime"] == 0.5  # the rig ran 0.5 s on its clock
    rows = {row["name"]: row for row in answer["roles"]}
    assert list(rows) == ["indexer", "query", "documents", "embedder-1", "embedder-2"]
    assert {row["state"] for row in rows.values()} == {"running"}
    assert rows["query"]["pid"] == r.proc("query").pid and rows["query"]["restarts"] == 0
    assert answer["store"]["chunks"] == 10 and answer["store"]["percent"] == 50.0
    assert answer["backups"]["running"] is None  # the fake scheduler's answer, passed through
    run(r, "status")
    r.clock.now += 0.9
    run(r, "status")
    assert r.arbiter.store.counted == 1  # a client polling status does not recount the store
    r.clock.now += 0.1
    run(r, "status")
    assert r.arbiter.store.counted == 2


def test_status_shows_a_restart_as_stopping_and_a_stop_as_stopped(r):
    run(r, "restart", role="query")
    run(r, "stop", role="indexer")
    states = {row["name"]: row["state"] for row in run(r, "status")["roles"]}
    assert states["query"] == "stopping" and states["indexer"] == "stopping"
    r.proc("indexer").exit(-signal.SIGTERM)
    r.run(0.25)
    assert {row["name"]: row["state"] for row in run(r, "status")["roles"]}["indexer"] == "stopped"


def test_stop_one_role_by_kind_or_name(r):
    assert run(r, "stop", role="embedder") == {"stopped": EMBEDDERS}
    assert run(r, "stop", role="query") == {"stopped": ["query"]}
    assert r.proc("query").signals == [signal.SIGTERM]
    assert r.arbiter.shutdown_phase is None  # the supervisor itself carries on


def test_stop_everything_answers_at_once(r):
    assert run(r, "stop") == {"stopping": True, "pid": os.getpid()}
    assert r.arbiter.shutdown_phase is not None
    assert r.arbiter.store.counted == 0  # answering it counted nothing
    r.run(0.25)
    assert r.proc("documents").signals == [signal.SIGTERM] and r.proc("query").signals == []


def test_stop_an_unknown_role_is_bad_input(r):
    with pytest.raises(BadInput, match="no role 'nonsense'.*embedder-1"):
        run(r, "stop", role="nonsense")


def test_restart(r):
    assert run(r, "restart", role="embedder-2") == {"restarted": ["embedder-2"]}
    assert r.proc("embedder-2").signals == [signal.SIGTERM]
    assert r.proc("embedder-1").signals == []


@pytest.mark.parametrize("fields", [{}, {"role": ""}, {"role": 3}, {"role": None}])
def test_restart_without_a_role_is_bad_input(r, fields):
    with pytest.raises(BadInput, match="restart needs a role"):
        run(r, "restart", **fields)
    assert all(not p.signals for p in r.popen.spawned)


def test_restart_of_an_unknown_role_is_bad_input(r):
    with pytest.raises(BadInput, match="no role 'embedder-9'"):
        run(r, "restart", role="embedder-9")
    assert all(not p.signals for p in r.popen.spawned)


def test_restart_while_stopping_is_bad_input(r):
    run(r, "stop")
    with pytest.raises(BadInput, match="stopping"):
        run(r, "restart", role="query")


@pytest.mark.parametrize("op", ["sleep", "wake"])
def test_sleep_and_wake_ask_each_chosen_role(r, op):
    names = ["indexer", "query", "documents", *EMBEDDERS]
    assert run(r, op) == {"asked": names}
    assert r.published == [(name, op) for name in names]
    r.published.clear()
    assert run(r, op, role="embedder") == {"asked": EMBEDDERS}
    assert r.published == [(name, op) for name in EMBEDDERS]
    with pytest.raises(BadInput, match="no role"):
        run(r, op, role="nobody")


@pytest.mark.parametrize("event", ["pause", "resume"])
def test_notify_tells_the_embedders(r, event):
    assert run(r, "notify", event=event) == {"notified": event}
    assert r.published == [("embedder", event)]


def test_notify_defaults_to_new_work_for_the_embedders_and_the_indexer(r):
    assert run(r, "notify") == {"notified": "work"}
    assert r.published == [("embedder", "work"), ("indexer", "work")]  # the indexer copies reused vectors


def test_the_documents_roles_work_counter_becomes_a_work_command(r):
    documents = r.child("documents")
    beat = lambda work: r.arbiter.follow_counters(documents, {"state": "running", "work": work})  # noqa: E731
    beat(0)
    assert r.published == []
    beat(2)  # puts left chunks since the last heartbeat
    assert r.published == [("embedder", "work"), ("indexer", "work")]
    beat(2)  # nothing new
    beat(0)  # a restarted role counts from 0 again ...
    assert len(r.published) == 2
    beat(1)  # ... and its first put is news
    assert r.published[2:] == [("embedder", "work"), ("indexer", "work")]
    beat("garbage")
    assert len(r.published) == 4


@pytest.mark.parametrize("event", ["explode", "", 7, None])
def test_notify_with_a_bad_event_is_bad_input(r, event):
    with pytest.raises(BadInput, match="notify takes one of work, pause, resume"):
        run(r, "notify", event=event)
    assert r.published == []
