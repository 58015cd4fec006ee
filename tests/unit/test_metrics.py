"""supervisor.metrics and roxi_mp.histogram: the /metrics exposition of a snapshot (issue 20)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from roxi_mp.histogram import BUCKETS, Histogram
from supervisor.metrics import Counters, render, role_counts


def families(text: bytes) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def sample(fams: dict, family: str, name: str, **labels) -> float:
    return next(s.value for s in fams[family].samples if s.name == name and s.labels == labels)


def query_row(pid: int, served: int, hybrid_seconds: list[float], errors: dict | None = None, **extra) -> dict:
    h = Histogram()
    for s in hybrid_seconds:
        h.observe(s)
    return {"name": "query", "role": "query", "pid": pid, "state": "running", "restarts": 0, "rss": 50 << 20,
            "cpu_seconds": 1.5, "mapped_bytes": 0, "served": served, "errors": sum((errors or {}).values()),
            "metrics": {"query_seconds": {"hybrid": h.as_dict(), "dense": Histogram().as_dict(),
                                          "lexical": Histogram().as_dict()}, "errors": errors or {}}, **extra}


def snapshot(*rows: dict) -> dict:
    return {"running": True, "supervisor": {"pid": 1, "state": "running", "rss": 40 << 20, "cpu_seconds": 2.0},
            "roles": list(rows),
            "store": {"documents": 3, "chunks": 10, "pending": 4, "leased": 1, "indexed": 5, "failed": 0,
                      "live_rows": 5, "dead_rows": 2, "percent": 50.0, "rate_per_second": 1.5, "reused": 1},
            "backups": {"count": 2, "taken": 1, "last_epoch": 1_790_000_000.0}}


def test_histogram_buckets_are_counted_where_they_belong() -> None:
    h = Histogram()
    for s in (0.0005, 0.001, 0.003, 100.0):
        h.observe(s)
    d = h.as_dict()
    assert d["counts"][0] == 2 and d["counts"][2] == 1 and d["counts"][len(BUCKETS)] == 1
    assert h.count == 4 and d["sum"] == pytest.approx(100.0045)


def test_render_parses_with_the_expected_names_and_types() -> None:
    c = Counters()
    row = query_row(10, served=3, hybrid_seconds=[0.002, 0.004, 0.2], errors={"bad_request": 2})
    c.observe("query", 10, role_counts(row))
    fams = families(render(snapshot(row), c))
    types = {name: f.type for name, f in fams.items()}
    assert types["roxi_queries"] == "counter" and types["roxi_query_errors"] == "counter"
    assert types["roxi_query_duration_seconds"] == "histogram" and types["roxi_chunks"] == "gauge"
    for name in ("roxi_commits", "roxi_chunks_embedded", "roxi_cpu_seconds", "roxi_role_restarts", "roxi_backups_taken"):
        assert types[name] == "counter", name
    for name in ("roxi_embedding_batch_duration_seconds", "roxi_commit_duration_seconds"):
        assert types[name] == "histogram", name
    for name in ("roxi_resident_memory_bytes", "roxi_role_state", "roxi_rows", "roxi_documents", "roxi_backups",
                 "roxi_backup_last_success_timestamp_seconds", "roxi_up"):
        assert types[name] == "gauge", name
    assert all(name.startswith("roxi_") for name in fams)
    assert sample(fams, "roxi_queries", "roxi_queries_total", mode="hybrid") == 3
    assert sample(fams, "roxi_query_errors", "roxi_query_errors_total", code="bad_request") == 2
    assert sample(fams, "roxi_query_duration_seconds", "roxi_query_duration_seconds_bucket", mode="hybrid",
                  le="0.005") == 2
    assert sample(fams, "roxi_query_duration_seconds", "roxi_query_duration_seconds_count", mode="hybrid") == 3
    assert sample(fams, "roxi_chunks", "roxi_chunks", state="pending") == 4
    assert sample(fams, "roxi_rows", "roxi_rows", state="dead") == 2
    assert sample(fams, "roxi_role_state", "roxi_role_state", role="query", state="running") == 1
    assert sample(fams, "roxi_resident_memory_bytes", "roxi_resident_memory_bytes", role="supervisor") == 40 << 20


def test_counters_never_go_down_across_a_restart() -> None:
    c = Counters()
    before = query_row(10, served=5, hybrid_seconds=[0.01] * 5, errors={"timeout": 1}, cpu_seconds=9.0)
    c.observe("query", 10, role_counts(before))
    c.observe("query", None, {})  # in backoff: no process
    after = query_row(11, served=2, hybrid_seconds=[0.01] * 2, cpu_seconds=0.5)
    c.observe("query", 11, role_counts(after))
    fams = families(render(snapshot(after), c))
    assert sample(fams, "roxi_queries", "roxi_queries_total", mode="hybrid") == 7
    assert sample(fams, "roxi_query_duration_seconds", "roxi_query_duration_seconds_count", mode="hybrid") == 7
    assert sample(fams, "roxi_query_errors", "roxi_query_errors_total", code="timeout") == 1
    assert sample(fams, "roxi_cpu_seconds", "roxi_cpu_seconds_total", role="query") == pytest.approx(9.5)
    # a new process seen under the old pid number, counting from 0 again: still folded in
    c.observe("query", 11, role_counts(query_row(11, served=1, hybrid_seconds=[0.01], cpu_seconds=0.1)))
    fams = families(render(snapshot(after), c))
    assert sample(fams, "roxi_queries", "roxi_queries_total", mode="hybrid") == 8


def test_rows_of_roles_starting_asleep_failed_or_odd_never_break_render() -> None:
    rows = [{"name": "embedder-1", "role": "embedder", "state": "starting", "pid": None, "rss": None},
            {"name": "indexer", "role": "indexer", "state": "failed", "pid": None, "restarts": 7},
            {"name": 'we"ird\\name\n', "role": "query", "state": "asleep", "pid": 5, "metrics": "not a map"},
            {"name": "documents", "role": "documents", "state": "asleep", "pid": 6, "puts": True}]
    c = Counters()
    for r in rows:
        c.observe(r["name"], r.get("pid"), role_counts(r))
    fams = families(render({"roles": rows, "store": {}, "supervisor": {}}, c))
    assert sample(fams, "roxi_role_restarts", "roxi_role_restarts_total", role="indexer") == 7
    assert sample(fams, "roxi_role_state", "roxi_role_state", role='we"ird\\name\n', state="asleep") == 1
    assert "roxi_backup_last_success_timestamp_seconds" not in fams  # no backup yet: no time


def test_the_dashboard_renders_each_snapshot_once_however_often_it_is_scraped(make_config, monkeypatch) -> None:
    from types import SimpleNamespace

    from supervisor import dashboard, metrics

    renders = []

    def counting(status, counters):
        renders.append(status)
        return render(status, counters)

    monkeypatch.setattr(metrics, "render", counting)
    board = dashboard.Dashboard(SimpleNamespace(cfg=make_config()))
    c = Counters()
    first = snapshot(query_row(10, served=3, hybrid_seconds=[0.002]))
    board.metrics_input = (first, c.copy())
    text = board.exposition()
    assert board.exposition() is text and len(renders) == 1  # the same snapshot: the same bytes
    second = snapshot(query_row(10, served=4, hybrid_seconds=[0.002]))
    second["store"]["documents"] = 7
    board.metrics_input = (second, c.copy())  # what publish() does: a new tuple, never changed
    fams = families(board.exposition())
    assert len(renders) == 2 and renders[-1] is second
    assert sample(fams, "roxi_documents", "roxi_documents") == 7
