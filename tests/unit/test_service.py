"""Unit tests of the library calls behind the CLI (roxi_mp.operations, service's role waits).

No process is started: the running system is a fake whose counts move only when the
code under test sleeps, on a fake clock; ingest and backup run on a real temporary store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from roxi_mp import errors, operations, service
from roxi_mp.errors import AlreadyRunning, BadInput, NotRunning, RoxiError, TargetUnreachable, Timeout
from roxi_mp.lock import DataDirLock


class FakeSystem:
    """A running system as roxi_mp.service shows it: `step` chunks get indexed per sleep while
    processing is not paused; `failed` chunks never will be."""

    def __init__(self, *, chunks: int = 100, step: int = 10, failed: int = 0, running: bool = True) -> None:
        self.chunks, self.step, self.failed, self.running = chunks, step, failed, running
        self.indexed = 0
        self.paused = True
        self.pauses: list[bool] = []
        self.now = 0.0
        self.sleeps = 0
        self.interrupt_at: int | None = None  # Ctrl-C during this sleep

    def stats(self, cfg: Any) -> dict:
        percent = 100.0 * self.indexed / self.chunks if self.chunks else 0.0
        return {"chunks": self.chunks, "indexed": self.indexed, "failed": self.failed, "leased": 0,
                "pending": self.chunks - self.indexed - self.failed, "percent": percent}

    def set_paused(self, cfg: Any, paused: bool) -> None:
        self.pauses.append(paused)
        self.paused = paused

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        if self.sleeps == self.interrupt_at:
            raise KeyboardInterrupt
        self.now += seconds
        if not self.paused:
            self.indexed = min(self.indexed + self.step, self.chunks - self.failed)

    def clock(self) -> float:
        return self.now


@pytest.fixture
def cfg(make_config):
    return make_config()


@pytest.fixture
def fake(monkeypatch) -> FakeSystem:
    system = FakeSystem()
    monkeypatch.setattr(service, "is_running", lambda cfg: system.running)
    monkeypatch.setattr(service, "store_stats", system.stats)
    monkeypatch.setattr(service, "set_paused", system.set_paused)
    return system


def process(cfg, fake: FakeSystem, target: float, **kwargs) -> dict:
    return operations.process_until(cfg, target, sleep=fake.sleep, clock=fake.clock, **kwargs)


def test_process_until_resumes_stops_at_the_target_and_pauses_again(cfg, fake: FakeSystem) -> None:
    seen: list[int] = []
    final = process(cfg, fake, 50, on_progress=lambda stats: seen.append(stats["indexed"]))
    assert fake.pauses == [False, True]
    assert seen == [0, 10, 20, 30, 40, 50]
    assert final["indexed"] == 50 and final["percent"] == 50.0
    assert fake.sleeps == 5


def test_process_until_with_nothing_pending_raises_target_unreachable_and_pauses(cfg, fake: FakeSystem) -> None:
    fake.failed = 70  # at most 30 % can ever be indexed
    with pytest.raises(TargetUnreachable, match="target 50 % cannot be reached: 70 chunks failed") as exc:
        process(cfg, fake, 50)
    assert exc.value.exit_code == errors.SERVER == 9
    assert fake.indexed == 30
    assert fake.pauses == [False, True]


def test_process_until_times_out_on_the_injected_clock_and_pauses(cfg, fake: FakeSystem) -> None:
    fake.step = 1
    with pytest.raises(Timeout, match=r"^3.0 % after 0.25 s, below 50 %$") as exc:
        process(cfg, fake, 50, timeout=0.25)
    assert exc.value.exit_code == errors.TIMEOUT == 8
    assert fake.now == pytest.approx(0.3)  # the first reading past the deadline gives up
    assert fake.pauses == [False, True]


def test_process_until_ctrl_c_pauses_and_propagates(cfg, fake: FakeSystem) -> None:
    fake.interrupt_at = 3
    with pytest.raises(KeyboardInterrupt):
        process(cfg, fake, 100)
    assert fake.pauses == [False, True]
    assert fake.indexed == 20


def test_process_until_an_error_while_reading_still_pauses(cfg, fake: FakeSystem, monkeypatch) -> None:
    calls = iter([fake.stats(cfg), fake.stats(cfg)])

    def stats(cfg):
        try:
            return next(calls)
        except StopIteration:
            raise RoxiError("store went away") from None

    monkeypatch.setattr(service, "store_stats", stats)
    with pytest.raises(RoxiError, match="store went away"):
        process(cfg, fake, 50)
    assert fake.pauses == [False, True]


def test_process_until_refuses_without_resuming(cfg, fake: FakeSystem) -> None:
    fake.running = False
    with pytest.raises(NotRunning, match="`roxi start` first"):
        process(cfg, fake, 50)
    fake.running, fake.chunks = True, 0
    with pytest.raises(BadInput, match="no chunks"):
        process(cfg, fake, 50)
    assert fake.pauses == [] and fake.sleeps == 0


def test_target_reached_needs_chunks() -> None:
    assert not operations.target_reached({"chunks": 0, "percent": 0.0}, 0)
    assert operations.target_reached({"chunks": 4, "percent": 50.0}, 50)
    assert not operations.target_reached({"chunks": 4, "percent": 49.9}, 50)


def test_wait_for_reads_every_interval_until_the_target(cfg, fake: FakeSystem) -> None:
    fake.paused = False  # something else resumed it; wait_for only watches
    stats = operations.wait_for(cfg, 30, interval=2.0, sleep=fake.sleep)
    assert stats["indexed"] == 30 and fake.now == 6.0
    assert fake.pauses == []


def test_progress_report_has_target_and_reached_only_with_a_target(cfg, fake: FakeSystem, monkeypatch) -> None:
    monkeypatch.setattr(service, "failures", lambda cfg, limit: [{"chunk_id": 1}] * limit)
    fake.indexed = 40
    plain = operations.progress_report(cfg)
    assert "target" not in plain and "reached" not in plain and plain["failures"] == []
    fake.failed = 2
    report = operations.progress_report(cfg, target=50)
    assert (report["target"], report["reached"], report["indexed"]) == (50, False, 40)
    assert len(report["failures"]) == 5


def test_restore_refuses_a_running_system_unless_stop_first(cfg, monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(service, "is_running", lambda cfg: "stop" not in calls)
    monkeypatch.setattr(service, "stop", lambda cfg: calls.append("stop"))
    monkeypatch.setattr(operations.backup_mod, "restore",
                        lambda cfg, path, progress=None: calls.append(f"restore {path}") or "manifest")
    with pytest.raises(AlreadyRunning, match="pass --stop"):
        operations.restore(cfg, Path("b1"))
    assert calls == []
    assert operations.restore(cfg, Path("b1"), stop_first=True) == "manifest"
    assert calls == ["stop", "restore b1"]


def test_find_backup_by_name_or_path(cfg, tmp_path: Path) -> None:
    (cfg.backup_dir / "b1").mkdir(parents=True)
    assert operations.find_backup(cfg, "b1") == cfg.backup_dir / "b1"
    assert operations.find_backup(cfg, str(cfg.backup_dir / "b1")) == cfg.backup_dir / "b1"
    with pytest.raises(BadInput, match="no backup 'nope'"):
        operations.find_backup(cfg, "nope")


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.md").write_text("# Gout\n\nGout is an inflammatory arthritis.\n")
    (d / "b.txt").write_text("Lupus is a systemic autoimmune disease.\n")
    return d


def test_ingest_reports_progress_in_files(cfg, docs: Path) -> None:
    seen: list[tuple[int, int]] = []
    report = operations.ingest(cfg, [docs, docs / "missing.md"], progress=lambda d, t: seen.append((d, t)))
    assert (report.added, report.chunks, len(report.errors)) == (2, 2, 1)
    assert seen == [(0, 2), (1, 2), (2, 2)]


def test_ingest_is_refused_while_the_store_is_rebuilt(cfg, docs: Path) -> None:
    cfg.data_dir.mkdir(parents=True)
    lock = DataDirLock(cfg.lock_path, purpose="reembed")
    lock.acquire()
    try:
        with pytest.raises(AlreadyRunning, match="reembed .* is rebuilding the store"):
            operations.ingest(cfg, [docs])
    finally:
        lock.release()
    assert not cfg.db_path.exists()


def test_backup_creates_then_prunes_to_keep(make_config, docs: Path) -> None:
    cfg = make_config(backup__keep=1)
    operations.ingest(cfg, [docs])
    first, removed = operations.backup(cfg)
    assert removed == []
    second, removed = operations.backup(cfg, kind="milestone")
    assert removed == [first] and second.is_dir() and not first.exists()


# --- service: one wait for the role polls ---------------------------------------------------
def statuses(*rows: list[dict]):
    replies = iter([{"roles": r} for r in rows])
    return lambda cfg, command, **args: next(replies)


def test_wait_roles_returns_the_status_once_nothing_is_pending(cfg, monkeypatch) -> None:
    monkeypatch.setattr(service, "POLL", 0.0)
    monkeypatch.setattr(service, "control", statuses([{"name": "a", "pid": 1}], [{"name": "a", "pid": None}]))
    last = service._wait_roles(cfg, lambda roles: [n for n, r in roles.items() if r["pid"]], timeout=60,
                               late=lambda names: "late")
    assert last == {"roles": [{"name": "a", "pid": None}]}


def test_wait_roles_times_out_naming_what_it_waits_for(cfg, monkeypatch) -> None:
    monkeypatch.setattr(service, "control", statuses([{"name": "a", "pid": 1}, {"name": "b", "pid": 2}]))
    with pytest.raises(Timeout, match=r"^a, b still there$"):
        service._wait_roles(cfg, lambda roles: list(roles), timeout=-1,
                            late=lambda names: f"{', '.join(names)} still there")


def test_restart_role_gives_up_when_the_role_fails_again(cfg, monkeypatch) -> None:
    replies = iter([{"restarted": ["query"]}, {"roles": [{"name": "query", "state": "failed"}]}])
    monkeypatch.setattr(service, "control", lambda cfg, command, **args: next(replies))
    with pytest.raises(RoxiError, match="query failed again: no log"):
        service.restart_role(cfg, "query")
