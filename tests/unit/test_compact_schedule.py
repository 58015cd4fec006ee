"""When compactions start (roxi_mp.compact_schedule), the indexer running one while it
commits, the `compact` control command, and the supervisor's view of mapped vectors files."""

from __future__ import annotations

import mmap
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zmq

from roxi_mp import compact, protocol
from roxi_mp.compact_schedule import Compactions, Phase
from roxi_mp.config import Config
from roxi_mp.errors import Busy
from roxi_mp.roles.indexer import Indexer
from roxi_mp.store import Store
from supervisor.child import ChildState, mapped_vectors
from supervisor.commands import compact as compact_command
from tests.compact_audit import audit, put, texts_of, unit_config, vec
from tests.conftest import PATIENCE, FakeClock
from tests.unit.test_compact import build
from tests.unit.test_roles import DIM, FAST, vectors_message

GIB = 2**30


@pytest.fixture
def cfg(make_config):
    yield from unit_config(make_config, **FAST)


class FakeProc:
    def __init__(self, code: int | None = None) -> None:
        self.code = code

    def poll(self) -> int | None:
        return self.code

    def terminate(self) -> None:
        self.code = -15

    def wait(self, timeout: float | None = None) -> int | None:
        return self.code


def disk(free: int):
    return lambda path: SimpleNamespace(f_bavail=free // 4096, f_frsize=4096)


def scheduler(cfg: Config, *, free: int = 100 * GIB, **indexer) -> tuple[Compactions, list, FakeClock]:
    for key, value in {"compact_min_rows": 100, "compact_dead_fraction": 0.2, **indexer}.items():
        setattr(cfg.indexer, key, value)
    spawned: list[FakeProc] = []

    def spawn(epoch: int) -> FakeProc:
        spawned.append(FakeProc())
        return spawned[-1]

    clock = FakeClock()
    with Store(cfg.db_path) as store:
        return Compactions(cfg, store, dim=DIM, spawn=spawn, statvfs=disk(free), clock=clock), spawned, clock


def test_a_compaction_starts_when_dead_rows_pass_both_thresholds(cfg: Config) -> None:
    build(cfg, docs=30, chunks=10, delete=5)  # 50 dead of 300: under compact_min_rows
    c, spawned, clock = scheduler(cfg)
    with Store(cfg.db_path) as store:
        c.step(store)
        assert not spawned and c.info()["reclaimable_bytes"] == 50 * 2 * DIM
        for d in range(5, 12):
            store.delete_document(f"doc{d}")  # 120 dead: over 100, and over 20 % of 300
        c.step(store)
        assert not spawned  # not before the next check
        clock.now += cfg.indexer.compact_check_seconds
        c.step(store)
        assert len(spawned) == 1 and c.phase is Phase.COPYING and c.info()["running"]
        c.request()
        clock.now += cfg.indexer.compact_check_seconds
        c.step(store)
        assert len(spawned) == 1  # never a second one while one runs


def test_asked_for_it_runs_below_the_thresholds_but_not_without_dead_rows(cfg: Config) -> None:
    build(cfg, docs=10, chunks=10, delete=0)
    c, spawned, clock = scheduler(cfg)
    with Store(cfg.db_path) as store:
        c.request()
        c.step(store)
        assert not spawned and not c.running
        store.delete_document("doc0")
        c.request()
        c.step(store)
        assert len(spawned) == 1


def test_a_compaction_the_disk_cannot_hold_is_refused_with_the_reason(cfg: Config) -> None:
    build(cfg)
    c, spawned, clock = scheduler(cfg, free=10 << 20)
    with Store(cfg.db_path) as store:
        c.step(store)
        assert not spawned and not c.running
        assert "not enough disk space to compact" in c.info()["refused"]
        c.statvfs = disk(100 * GIB)  # space was freed
        clock.now += cfg.indexer.compact_check_seconds
        c.step(store)
    assert len(spawned) == 1 and c.info()["refused"] is None


def test_a_failed_child_leaves_the_old_store_and_is_retried_later(cfg: Config) -> None:
    build(cfg)
    c, spawned, clock = scheduler(cfg)
    with Store(cfg.db_path) as store:
        c.step(store)
        cfg.vectors_file(1).write_bytes(b"half a file")
        spawned[0].code = 1
        c.step(store)
        assert c.phase is Phase.IDLE and "exited with 1" in c.info()["error"]
        assert not cfg.vectors_file(1).exists()
        clock.now += cfg.indexer.compact_check_seconds
        c.step(store)
        assert len(spawned) == 1  # backing off
        clock.now += 4 * cfg.indexer.compact_check_seconds
        c.step(store)
        assert len(spawned) == 2


class ThreadProc:
    """The compaction child, run in a thread of the test (its real work, in-process)."""

    def __init__(self, cfg: Config, epoch: int) -> None:
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, args=(cfg, epoch))
        self.thread.start()

    def _run(self, cfg: Config, epoch: int) -> None:
        compact.run(cfg, epoch)
        time.sleep(0.5)  # long enough for commits to land after its snapshot
        self.code = 0

    def poll(self) -> int | None:
        return self.code


def test_the_indexer_compacts_while_it_commits_rows(cfg: Config) -> None:
    build(cfg)
    cfg.indexer.compact_min_rows = 100
    ctx = zmq.Context()
    indexer = Indexer(cfg, ctx)
    indexer.initialize()
    procs: list[ThreadProc] = []
    indexer.compactions.spawn = lambda epoch: procs.append(ThreadProc(cfg, epoch)) or procs[-1]
    push = protocol.configure(ctx.socket(zmq.PUSH), hwm=100)
    push.connect(cfg.endpoint("vectors"))
    try:
        with Store(cfg.db_path) as store:
            for d in range(5):
                put(store, f"new{d}", texts_of(f"new{d}", 8))
            fresh = store.conn.execute("SELECT id, text FROM chunks WHERE state='pending' ORDER BY id").fetchall()
        sent = 0
        deadline = time.monotonic() + PATIENCE
        while indexer.compactions.count == 0 or indexer.compactions.running:
            assert time.monotonic() < deadline, "the compaction did not finish"
            if procs and sent < len(fresh):  # rows arrive while the child copies
                part = fresh[sent:sent + 8]
                push.send_multipart(vectors_message([i for i, _ in part], np.stack([vec(t, DIM) for _, t in part])))
                sent += len(part)
            indexer.loop(time.monotonic())
        while sent < len(fresh) or indexer.rows_committed < len(fresh):
            if sent < len(fresh):
                part = fresh[sent:sent + 8]
                push.send_multipart(vectors_message([i for i, _ in part], np.stack([vec(t, DIM) for _, t in part])))
                sent += len(part)
            indexer.loop(time.monotonic())
            assert time.monotonic() < deadline
        info = indexer.info()["compaction"]
        assert info["count"] == 1 and not info["running"]
        assert info["last"]["rows_before"] > 300  # rows committed after the snapshot were carried over
        assert indexer.writer.path == cfg.vectors_file(1) and indexer.writer.rows == 180 + 40
    finally:
        push.close(0)
        indexer.shutdown()
        ctx.destroy(linger=0)
    facts = audit(cfg, dim=DIM)
    assert (facts["epoch"], facts["rows"], facts["dead"]) == (1, 220, 0)


def test_while_a_compaction_runs_the_indexer_looks_in_often(cfg: Config) -> None:
    """Its child's end and the cleanup's next step wait 50 ms at most, not the 0.5 s idle
    poll (a 10k-row cleanup's seven steps took 3.6 s of waiting); idle, it polls as before."""
    from roxi_mp.roles.indexer import COMPACTION_POLL_SECONDS, SWITCH_POLL_SECONDS

    build(cfg)
    cfg.supervisor.heartbeat_seconds = 1.0  # the default: an idle poll of 0.5 s
    ctx = zmq.Context()
    indexer = Indexer(cfg, ctx)
    indexer.initialize()
    try:
        now = indexer.step_now = time.monotonic()
        idle = indexer.wait_seconds(now)
        assert idle == indexer.poll_timeout() > COMPACTION_POLL_SECONDS
        waits = {}
        for phase in Phase:
            indexer.compactions.phase = phase
            waits[phase] = indexer.wait_seconds(now)
        assert waits == {Phase.IDLE: idle, Phase.READY: idle, Phase.COPYING: COMPACTION_POLL_SECONDS,
                         Phase.CLEANING: COMPACTION_POLL_SECONDS, Phase.SWITCHING: SWITCH_POLL_SECONDS}
        indexer.compactions.phase = Phase.CLEANING
        indexer.deadline = now + 0.01  # a commit due sooner still comes first
        assert indexer.wait_seconds(now) == pytest.approx(0.01)
    finally:
        indexer.compactions.phase = Phase.IDLE
        indexer.deadline = None
        indexer.shutdown()
        ctx.destroy(linger=0)


# --- the control command -------------------------------------------------------------------
class FakeArbiter:
    """What the command reads of the arbiter (a plain object: the command remembers per arbiter)."""


@pytest.fixture
def arbiter(cfg: Config):
    build(cfg)
    store = Store(cfg.db_path)
    indexer = SimpleNamespace(kind="indexer", state=ChildState.RUNNING, pid=4321,
                              info={"compaction": {"running": False, "count": 0}})
    clock = FakeClock()
    made = FakeArbiter()
    made.cfg, made.store, made.children, made.clock, made.published = cfg, store, [indexer], clock, []
    made.publish = lambda target, op: made.published.append((target, op))
    yield made
    store.close()


def test_compact_asks_the_indexer_once(arbiter, monkeypatch) -> None:
    monkeypatch.setattr("supervisor.commands.compact.disk_refusal", lambda *a, **k: None)
    answer = compact_command.execute(arbiter, {"op": "compact"})
    assert answer["started"] and answer["running"] and arbiter.published == [("indexer", "compact")]
    again = compact_command.execute(arbiter, {"op": "compact"})  # before the indexer reports it
    assert (again["started"], again["running"]) == (False, True) and len(arbiter.published) == 1
    arbiter.children[0].info = {"compaction": {"running": True, "count": 0}}
    arbiter.clock.now += 60
    assert compact_command.execute(arbiter, {"op": "compact"})["started"] is False
    arbiter.children[0].info = {"compaction": {"running": False, "count": 1}}  # it finished
    assert compact_command.execute(arbiter, {"op": "compact"})["started"] is True
    arbiter.children[0].info = {"compaction": {"running": False, "count": 1, "error": "child exited with -9"}}
    assert compact_command.execute(arbiter, {"op": "compact"})["started"] is True  # it failed: ask again
    arbiter.children[0].pid = 4322  # the indexer restarted: whatever it was doing is gone
    assert compact_command.execute(arbiter, {"op": "compact"})["started"] is True
    assert compact_command.execute(arbiter, {"op": "compact"})["started"] is False
    assert "compact" in protocol.ROLE_OPS


def test_compact_refused_for_disk_or_a_stopped_indexer(arbiter, monkeypatch) -> None:
    monkeypatch.setattr("supervisor.commands.compact.disk_refusal", lambda *a, **k: "not enough disk space")
    with pytest.raises(Busy, match="not enough disk space"):
        compact_command.execute(arbiter, {"op": "compact"})
    arbiter.children[0].state = ChildState.BACKOFF
    with pytest.raises(Busy, match="indexer is backoff"):
        compact_command.execute(arbiter, {"op": "compact"})
    assert arbiter.published == []


def test_compact_with_nothing_dead_starts_nothing(arbiter) -> None:
    with arbiter.store.transaction() as conn:
        conn.execute("UPDATE chunks SET state='indexed' WHERE state='dropped'")
    answer = compact_command.execute(arbiter, {"op": "compact"})
    assert (answer["started"], answer["running"]) == (False, False) and arbiter.published == []


# --- status: the mapping of any vectors file ------------------------------------------------
def test_mapped_vectors_counts_every_epoch_s_file_also_deleted(tmp_path: Path) -> None:
    files = {name: tmp_path / name for name in ("vectors.faiss", "vectors.3.faiss", "vectors.ann")}
    maps = []
    for path in files.values():
        path.write_bytes(b"\1" * 8192)
        with open(path, "rb") as f:
            maps.append(mmap.mmap(f.fileno(), 8192, prot=mmap.PROT_READ))
    try:
        held = mapped_vectors(os.getpid(), tmp_path)
        assert held.size == 2 * 8192  # the .ann file is not a vectors file
        files["vectors.faiss"].unlink()  # compacted away, still mapped
        assert mapped_vectors(os.getpid(), tmp_path).size == 2 * 8192
    finally:
        for m in maps:
            m.close()
    assert mapped_vectors(os.getpid(), tmp_path).size == 0
