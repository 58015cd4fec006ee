"""Deep sleep with real processes (issue 4's acceptance): memory back to the floor, lazy
wake, an embedder that sleeps and wakes on ingest, a sleeping system that costs no CPU;
and issue 22's: embedders and the indexer exit in deep sleep (suspended) and come back on
work, and the whole system asleep fits in 110 MB."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

from roxi_mp.client import DocumentsClient
from roxi_mp.ingest import ingest_paths
from roxi_mp.memory import mapped, maps_file
from roxi_mp.service import READY_STATES
from roxi_mp.store import Store

from ..conftest import roxi_processes, wait_until
from ..corpus import populate, write_corpus
from .test_pipeline import roxi

pytestmark = pytest.mark.integration

MB = 2**20
#: seconds to wait for a state real processes reach in their own time (60): a deadline that
#: only a broken system misses, however loaded the machine
PATIENCE = 60.0


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def scan(s, text: str = "synovial joint inflammation", k: int = 10) -> list[dict]:
    with s.query_client(timeout=30) as client:
        return client.query(text, k=k)


def wait_asleep(s, name: str, timeout: float = PATIENCE, *, sleeps_above: int | None = None) -> None:
    """Wait until status shows `name` asleep; with `sleeps_above`, asleep after a sleep counted
    past that number: a row from before a query woke the role also says "asleep"."""
    def asleep() -> bool:
        row = s.role(name)
        return row["state"] == "asleep" and (sleeps_above is None or row.get("sleeps", 0) > sleeps_above)

    s.wait_for(asleep, timeout=timeout, what=f"{name} asleep")


#: states of a role in whole-system deep sleep
SLEEPING = ("asleep", "suspended")


def wait_suspended(s, *names: str, timeout: float = PATIENCE) -> None:
    s.wait_for(lambda: all(s.role(n)["state"] == "suspended" for n in names), timeout=timeout,
               what=f"{', '.join(names)} suspended")


def total_rss(data_dir) -> tuple[int, dict[str, int]]:
    """The RSS of every process of this data directory, from /proc, and each by command line."""
    each = {}
    for p in roxi_processes(data_dir):
        try:
            cmd = p.cmdline()
            name = cmd[cmd.index("--name") + 1] if "--name" in cmd else " ".join(cmd[1:3])
            each[f"{name}[{p.pid}]"] = p.memory_info().rss
        except (psutil.Error, ValueError):
            continue
    return sum(each.values()), each


@pytest.fixture
def store_100k(make_config):
    cfg = make_config(hashing__dim=384)
    populate(cfg, rows=100_000)
    return cfg


def test_roxi_sleep_returns_to_floor_and_unmaps(system, store_100k):
    """Acceptance 1: full scan at 100k, `roxi sleep`: RSS within 5 MB of the floor, no mapping."""
    s = system(store_100k)
    pid = s.pid("query")
    floor = rss(pid)  # the fresh process of this role: started, nothing mapped yet
    before = scan(s)
    assert len(before) == 10
    awake = rss(pid)
    held = mapped(pid, store_100k.vectors_path)
    assert held.size >= 100_000 * 384 * 2 and awake - floor > 50 * MB  # the scan touched every row
    result = roxi(store_100k, "sleep")
    assert result.returncode == 0, result.stderr
    assert s.role("query")["state"] == "asleep"
    assert not maps_file(pid, store_100k.vectors_path)
    assert rss(pid) - floor < 5 * MB, f"asleep {rss(pid) / MB:.1f} MB vs floor {floor / MB:.1f} MB"
    # Status shows it (its smaps reading may be up to a second old), and status woke nothing.
    s.wait_for(lambda: s.role("query")["mapped_bytes"] == 0, timeout=PATIENCE, what="status: nothing mapped")
    assert s.role("query")["state"] == "asleep" and not maps_file(pid, store_100k.vectors_path)
    after = scan(s)  # a query arriving during sleep wakes the server lazily
    assert [h["chunk_id"] for h in after] == [h["chunk_id"] for h in before]
    assert maps_file(pid, store_100k.vectors_path)


def test_roxi_sleep_answers_at_once_when_everything_sleeps_already(system, make_config):
    """`roxi sleep` waits for each role's heartbeat sent after its request; a role asleep
    already beats seldom (here every 300 s), so it must answer the request with a beat, or
    the second `roxi sleep` would fail after its 15 s wait. The indexer sleeps at once too,
    instead of after `embedder.idle_seconds` (300 s here)."""
    cfg = make_config(supervisor__sleep_heartbeat_seconds=300.0, embedder__idle_seconds=300.0)
    populate(cfg, rows=500)
    s = system(cfg)
    scan(s)
    for _ in range(2):
        result = roxi(cfg, "sleep")
        assert result.returncode == 0, result.stderr
        assert s.role("query")["state"] == "asleep" and s.role("documents")["state"] == "asleep"
    wait_suspended(s, "indexer")


def test_sleeps_by_itself_after_idle_seconds(system, make_config):
    """Acceptance 2: the same after query.idle_seconds without a query."""
    cfg = make_config(hashing__dim=384, query__idle_seconds=1.5)
    populate(cfg, rows=100_000)
    s = system(cfg)
    pid = s.pid("query")
    floor = rss(pid)
    scan(s)
    assert maps_file(pid, cfg.vectors_path)
    # The server started asleep (never awake: 0 sleeps counted); the scan woke it.
    wait_asleep(s, "query", sleeps_above=0)
    assert not maps_file(pid, cfg.vectors_path)
    assert rss(pid) - floor < 5 * MB
    assert len(scan(s)) == 10


def test_sleeping_embedder_holds_no_model_and_wakes_on_ingest(system, make_config, tmp_path):
    """Acceptance 3: asleep, the embedder's model is unloaded (suspend off: it stays up);
    `roxi ingest` wakes it at once.

    "At once" means woken by the ingest's notification, not by its own check 60 s later:
    under 1 s on an idle machine, but bounded here by 20 s, which a loaded machine's slow
    commits (fsync) cannot exceed and the 60 s check cannot meet.
    """
    cfg = make_config(embedder__idle_seconds=0.5, embedder__wake_check_seconds=60.0, supervisor__suspend=False)
    write_corpus(tmp_path / "a", docs=5, words=300, seed=1)
    write_corpus(tmp_path / "b", docs=5, words=300, seed=2)
    s = system(cfg)
    assert roxi(cfg, "ingest", str(tmp_path / "a")).returncode == 0
    s.wait_indexed(s.stats().chunks)
    wait_asleep(s, "embedder-1")
    row = s.role("embedder-1")
    assert row["model_loaded"] is False
    assert roxi(cfg, "ingest", str(tmp_path / "b")).returncode == 0
    ingested = time.monotonic()
    total = s.stats().chunks
    s.wait_indexed(total, timeout=PATIENCE)
    took = time.monotonic() - ingested
    assert took < 20.0, f"picked up {took:.2f} s after ingest (wake_check_seconds is 60)"


def test_suspended_roles_exit_and_come_back_on_ingest(system, make_config, tmp_path):
    """Issue 22: idle, the embedder and the indexer exit (suspended: no process, not
    failed, no restart counted); `roxi ingest` starts them again at once (the notice, not
    the store look 60 s later), and the new chunks are committed."""
    cfg = make_config(embedder__idle_seconds=0.5, embedder__wake_check_seconds=60.0)
    write_corpus(tmp_path / "a", docs=5, words=300, seed=1)
    write_corpus(tmp_path / "b", docs=5, words=300, seed=2)
    s = system(cfg)
    assert roxi(cfg, "ingest", str(tmp_path / "a")).returncode == 0
    s.wait_indexed(s.stats().chunks)
    wait_suspended(s, "embedder-1", "indexer")
    for name in ("embedder-1", "indexer"):
        row = s.role(name)
        assert row["pid"] is None and row["restarts"] == 0 and row["exit_code"] == 85
        assert row["suspended_seconds"] >= 0 and row["suspended_since"] <= time.time()
    out = roxi(cfg, "status").stdout
    assert "suspended" in out and "started again when work appears" in out
    assert len(scan(s)) == 10  # queries need neither of them
    assert roxi(cfg, "ingest", str(tmp_path / "b")).returncode == 0
    ingested = time.monotonic()
    s.wait_indexed(s.stats().chunks, timeout=PATIENCE)
    took = time.monotonic() - ingested
    assert took < 20.0, f"picked up {took:.2f} s after ingest (wake_check_seconds is 60)"
    for name in ("embedder-1", "indexer"):
        assert s.role(name)["resumes"] >= 1 and s.role(name)["restarts"] == 0
    wait_suspended(s, "embedder-1", "indexer")  # and gone again once idle


def test_the_store_look_finds_work_added_behind_the_supervisors_back(system, make_config, tmp_path):
    """Chunks added with no notice (a crashed `roxi ingest`, a lease of a dead embedder
    lapsing) are found by the supervisor's look every wake_check_seconds."""
    cfg = make_config(embedder__idle_seconds=0.5, embedder__wake_check_seconds=1.0)
    s = system(cfg)
    wait_suspended(s, "embedder-1", "indexer")
    write_corpus(tmp_path / "a", docs=3, words=200, seed=4)
    with Store.open(cfg) as store:  # the library call: no notice to the supervisor
        ingest_paths(store, [tmp_path / "a"], chunk_words=cfg.store.chunk_words, chunk_overlap=cfg.store.chunk_overlap,
                     max_document_bytes=cfg.store.max_document_bytes)
    s.wait_indexed(s.stats().chunks, timeout=PATIENCE)
    assert s.role("embedder-1")["resumes"] >= 1


def test_a_put_wakes_suspended_roles_and_a_compaction_starts_a_suspended_indexer(system, make_config):
    """A documents-endpoint put starts the suspended embedder and indexer (the role's `work`
    heartbeat); once they are gone again, `roxi compact` starts the indexer for it."""
    cfg = make_config(embedder__idle_seconds=1.0, embedder__wake_check_seconds=60.0)
    s = system(cfg)
    wait_suspended(s, "embedder-1", "indexer")
    with DocumentsClient.for_config(cfg, timeout=30) as client:
        put = client.put("guides/gout", "# Gout\n\nColchicine and allopurinol for gout flares.\n")
        assert put["outcome"] == "added" and put["chunks"] >= 1
        s.wait_indexed(s.stats().chunks, timeout=PATIENCE)  # the look is 60 s away: the put did it
        wait_suspended(s, "embedder-1", "indexer")
        assert client.delete("guides/gout") == 1
    result = roxi(cfg, "compact")
    assert result.returncode == 0, result.stderr
    s.wait_for(lambda: (s.role("indexer").get("compaction") or {}).get("count", 0) >= 1, timeout=PATIENCE,
               what="a compaction by the indexer started for it")
    assert s.role("indexer")["resumes"] >= 2 and s.role("indexer")["restarts"] == 0
    assert scan(s, "colchicine gout") == []  # the deleted document answers nothing


def test_sleep_and_wake_with_suspended_roles(system, make_config):
    """`roxi sleep` makes the embedder and (once idle) the indexer exit; `roxi wake` starts
    the embedder again with its model loaded; `roxi stop` and `restart` keep their rules."""
    cfg = make_config(embedder__idle_seconds=2.0)
    s = system(cfg)
    result = roxi(cfg, "sleep")
    assert result.returncode == 0, result.stderr
    wait_suspended(s, "embedder-1", "indexer")
    assert s.role("query")["state"] == "asleep"
    result = roxi(cfg, "wake", "embedder")
    assert result.returncode == 0, result.stderr
    row = s.role("embedder-1")
    assert row["state"] == "running" and row["model_loaded"] is True and row["resumes"] == 1
    assert roxi(cfg, "stop", "embedder").returncode == 0
    s.wait_for(lambda: s.role("embedder-1")["state"] == "stopped", timeout=PATIENCE, what="embedder stopped")
    assert roxi(cfg, "restart", "embedder").returncode == 0
    assert s.role("embedder-1")["state"] in READY_STATES and s.role("embedder-1")["restarts"] == 1


def test_embedder_floor_when_asleep(system, make_config, tmp_path):
    """The sleeping embedder's RSS is back near a fresh embedder's after real work (suspend
    off: it stays up; on, it holds nothing at all)."""
    cfg = make_config(embedder__idle_seconds=0.5, hashing__dim=1024, supervisor__suspend=False)
    s = system(cfg)
    floor = rss(s.pid("embedder-1"))
    write_corpus(tmp_path / "docs", docs=200, words=700)
    assert roxi(cfg, "ingest", str(tmp_path / "docs")).returncode == 0
    s.wait_indexed(s.stats().chunks, timeout=60)
    wait_asleep(s, "embedder-1")
    assert rss(s.pid("embedder-1")) - floor < 5 * MB


def test_whole_system_sleep_costs_under_one_percent_cpu(system, make_config):
    """Acceptance 4: all roxi processes together use < 1 % of one core asleep. The figure
    over the acceptance's 60 s is bench_sleep's (`--sleep-seconds 60`); this guard watches
    20 s, in which every periodic duty of a sleeping system comes round at least once (10 s
    heartbeats, work and backup checks and samples; the compaction check, 30 s by default,
    every 10 s here). CPU times come in 10 ms ticks per process: over 20 s the error is
    under 0.3 % of a core (measured asleep: 0.07-0.3 %)."""
    cfg = make_config(embedder__idle_seconds=0.5, query__idle_seconds=0.5, embedder__count=2,
                      indexer__compact_check_seconds=10.0)
    populate(cfg, rows=1000)
    s = system(cfg)
    scan(s)
    s.wait_for(lambda: all(r["state"] in SLEEPING for r in s.status()["roles"]), timeout=PATIENCE,
               what="every role asleep or suspended")
    procs = [psutil.Process(s.proc.pid)] + [psutil.Process(r["pid"]) for r in s.status()["roles"] if r["pid"]]

    def cpu() -> float:
        return sum(p.cpu_times().user + p.cpu_times().system for p in procs)

    start_cpu, start = cpu(), time.monotonic()
    time.sleep(20)
    used = (cpu() - start_cpu) / (time.monotonic() - start)
    assert all(r["state"] in SLEEPING for r in s.status()["roles"])
    assert used < 0.01, f"{used * 100:.2f} % of one core while asleep"


def test_sleep_during_in_flight_queries_is_safe(system, store_100k):
    """Sleep commands racing a stream of queries: every query answers, and correctly."""
    s = system(store_100k)
    expected = [h["chunk_id"] for h in scan(s, "chunk 123 tendon", k=5)]
    errors: list[BaseException] = []
    answers: list[list[int]] = []

    def query_loop() -> None:
        try:
            with s.query_client(timeout=30) as client:
                for _ in range(40):
                    answers.append([h["chunk_id"] for h in client.query("chunk 123 tendon", k=5)])
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=query_loop)
    thread.start()
    with s.control() as control:
        while thread.is_alive():
            control.command("sleep", role="query")
            time.sleep(0.01)
    thread.join()
    assert not errors, errors
    assert len(answers) == 40 and all(a == expected for a in answers)
    assert s.role("query")["restarts"] == 0


def test_commit_while_asleep_is_seen_after_wake(system, make_config, tmp_path):
    """A commit that lands while the query server sleeps is searched after it wakes."""
    cfg = make_config()
    write_corpus(tmp_path / "a", docs=3, words=200, seed=1)
    s = system(cfg)
    assert roxi(cfg, "ingest", str(tmp_path / "a")).returncode == 0
    s.wait_indexed(s.stats().chunks)
    scan(s)
    assert roxi(cfg, "sleep", "query").returncode == 0
    write_corpus(tmp_path / "b", docs=3, words=200, seed=9)
    assert roxi(cfg, "ingest", str(tmp_path / "b")).returncode == 0
    s.wait_indexed(s.stats().chunks)
    assert s.role("query")["state"] == "asleep"  # the commit did not wake it
    with Store(cfg.db_path) as store:
        chunk_id, text = store.conn.execute("SELECT id, text FROM chunks ORDER BY id DESC LIMIT 1").fetchone()
    hits = scan(s, text, k=1)
    assert hits[0]["chunk_id"] == chunk_id


def test_wake_prewarms_and_status_never_wakes(system, store_100k):
    s = system(store_100k)
    pid = s.pid("query")
    for _ in range(3):
        assert roxi(store_100k, "status").returncode == 0
    assert s.role("query")["state"] == "asleep" and not maps_file(pid, store_100k.vectors_path)
    result = roxi(store_100k, "wake", "query")
    assert result.returncode == 0, result.stderr
    assert s.role("query")["state"] in READY_STATES and maps_file(pid, store_100k.vectors_path)


def model_processes(cfg) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "roxi_mp.model_process" in cmd and str(cfg.data_dir) in cmd:
            out.append(p)
    return out


def test_minilm_query_server_sleeps_to_its_floor(system, make_config, tmp_path):
    """The default backend too: its model lives in a child process that deep sleep ends."""
    cfg = make_config(embedder__backend="minilm", supervisor__ingest_sample_on_empty=True)
    s = system(cfg)
    s.wait_indexed(s.stats().chunks, timeout=120)
    pid = s.pid("query")
    floor = rss(pid)
    first = scan(s, "heart attack", k=3)
    assert len(model_processes(cfg)) == 1
    assert roxi(cfg, "sleep", "query").returncode == 0
    assert model_processes(cfg) == []
    assert rss(pid) - floor < 5 * MB, f"asleep {rss(pid) / MB:.1f} MB vs floor {floor / MB:.1f} MB"
    assert [h["chunk_id"] for h in scan(s, "heart attack", k=3)] == [h["chunk_id"] for h in first]


def test_model_process_dies_with_a_killed_supervisor(system, make_config):
    cfg = make_config(embedder__backend="minilm", supervisor__ingest_sample_on_empty=True)
    s = system(cfg)
    scan(s, "gout")
    assert len(model_processes(cfg)) == 1
    os.kill(s.proc.pid, signal.SIGKILL)
    s.proc.wait(timeout=PATIENCE)
    wait_until(lambda: model_processes(cfg) == [] and roxi_processes(cfg.data_dir) == [],
               timeout=PATIENCE, what="every child gone after its supervisor")


@pytest.mark.parametrize("how", ["roxi sleep", "idle timers"])
def test_whole_system_asleep_fits_in_110_mb(system, make_config, how):
    """Issue 22, acceptance 1: the MiniLM system on the sample corpus, after real work (the
    sample embedded, text queries answered) and `roxi sleep` or its idle timers alone: every
    roxi process together (read from /proc) holds <= 110 MB; a query while everything
    sleeps answers."""
    cfg = make_config(embedder__backend="minilm", supervisor__ingest_sample_on_empty=True,
                      embedder__idle_seconds=2.0, query__idle_seconds=3.0 if how == "idle timers" else 300.0)
    s = system(cfg)
    s.wait_indexed(s.stats().chunks, timeout=180)
    first = scan(s, "heart attack", k=3)
    if how == "roxi sleep":
        result = roxi(cfg, "sleep")
        assert result.returncode == 0, result.stderr
    wait_suspended(s, "embedder-1", "indexer")
    s.wait_for(lambda: all(r["state"] in SLEEPING for r in s.status()["roles"]), timeout=PATIENCE,
               what="every role asleep or suspended")
    wait_until(lambda: model_processes(cfg) == [], timeout=PATIENCE, what="the query model process gone")
    total, each = total_rss(cfg.data_dir)
    assert total <= 110 * MB, f"{total / MB:.1f} MB asleep: " + ", ".join(f"{k} {v / MB:.1f}" for k, v in each.items())
    assert [h["chunk_id"] for h in scan(s, "heart attack", k=3)] == [h["chunk_id"] for h in first]
