"""/metrics: the Prometheus text format of the supervisor's snapshot (issue 20).

The exposition is made by prometheus_client (a custom collector over a fresh registry per
render; nothing hand-formatted), imported at the first render: it brings http.server,
wsgiref, urllib and ssl along, 9 MB that a supervisor nobody scrapes does not hold
(issue 22: the whole system asleep in 110 MB). Names follow Prometheus's rules: one `roxi_` prefix, base
units (`_seconds`, `_bytes`), `_total` on counters; per process series carry a `role`
label (the process name: `query`, `embedder-1`, `supervisor`).

Counters come from the roles' heartbeats and from /proc, and a role's counts start again at
0 when it restarts. `Counters` keeps, per role, what its earlier processes had counted
and adds it on, so an exported counter never goes down across a restart (a scraper would
read a drop as a counter reset and misjudge the rate).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from roxi_mp.histogram import BUCKETS

#: chunk states exported (the store's counts)
CHUNK_STATES = ("pending", "leased", "indexed", "failed")
#: the states a process row may show
ROLE_STATES = ("starting", "running", "asleep", "suspended", "backoff", "stopping", "stopped", "failed")


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """{"a": {"b": 2, "c": [1, 2]}} -> {"a.b": 2, "a.c.0": 1, "a.c.1": 2}: numbers only."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[name] = value
        elif isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, list):
            out.update(flatten(dict(enumerate(value)), name + "."))
    return out


class Counters:
    """Per role, the counts of its current process plus what its earlier processes had
    counted (folded in when the pid changes, or when a count goes down: a restarted role
    that reported before the supervisor saw its new pid)."""

    def __init__(self) -> None:
        self.base: dict[str, dict[str, float]] = {}
        self.last: dict[str, dict[str, float]] = {}
        self.pids: dict[str, int] = {}

    def observe(self, name: str, pid: int | None, counts: dict[str, Any]) -> None:
        flat = flatten(counts)
        last = self.last.get(name, {})
        if self.pids.get(name) != pid or any(flat.get(k, 0) < v for k, v in last.items()):
            base = self.base.setdefault(name, {})
            for key, value in last.items():
                base[key] = base.get(key, 0) + value
            last = {}
        self.pids[name] = pid
        self.last[name] = {**last, **flat}

    def total(self, name: str, key: str) -> float:
        return self.base.get(name, {}).get(key, 0) + self.last.get(name, {}).get(key, 0)

    def names(self) -> list[str]:
        return sorted(set(self.base) | set(self.last))

    def copy(self) -> "Counters":
        """A snapshot that later observations do not change (rendered by another thread)."""
        out = Counters()
        out.base = {k: dict(v) for k, v in self.base.items()}
        out.last = {k: dict(v) for k, v in self.last.items()}
        out.pids = dict(self.pids)
        return out


def role_counts(row: dict[str, Any]) -> dict[str, Any]:
    """What `Counters` follows of a status row: the role's own counters and its CPU time."""
    metrics = row.get("metrics") if isinstance(row.get("metrics"), dict) else {}
    picked = {k: row[k] for k in ("served", "errors", "embedded", "batches", "commits", "puts", "deletes")
              if isinstance(row.get(k), (int, float)) and not isinstance(row.get(k), bool)}
    if row.get("cpu_seconds") is not None:
        picked["cpu_seconds"] = row["cpu_seconds"]
    return {**picked, **metrics}


class _Snapshot:
    """A prometheus_client collector over one snapshot."""

    def __init__(self, status: dict[str, Any], counters: Counters) -> None:
        self.status, self.counters = status, counters

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        status, c = self.status, self.counters
        store = status.get("store") or {}
        rows = [r for r in status.get("roles", []) if isinstance(r, dict) and r.get("name")]
        sup = status.get("supervisor") or {}

        up = GaugeMetricFamily("roxi_up", "1 while the supervisor answers")
        up.add_metric([], 1)
        yield up
        chunks = GaugeMetricFamily("roxi_chunks", "Chunks of live and pending versions by state", labels=["state"])
        for state in CHUNK_STATES:
            chunks.add_metric([state], store.get(state, 0) or 0)
        yield chunks
        rows_ = GaugeMetricFamily("roxi_rows", "Vector rows by liveness (dead rows wait for compaction)",
                                  labels=["state"])
        rows_.add_metric(["live"], store.get("live_rows", 0) or 0)
        rows_.add_metric(["dead"], store.get("dead_rows", 0) or 0)
        yield rows_
        yield _gauge("roxi_documents", "Documents with a live version", store.get("documents"))
        yield _gauge("roxi_indexed_ratio", "Share of chunks embedded and indexed (0-1)",
                     (store.get("percent") or 0) / 100)
        yield _gauge("roxi_indexing_rate_chunks_per_second", "Chunks indexed per second, last minutes",
                     store.get("rate_per_second"))
        yield _gauge("roxi_vectors_reused", "Vectors copied from an earlier version instead of embedded",
                     store.get("reused"))

        # per process: memory, CPU, state, restarts
        memory = GaugeMetricFamily("roxi_resident_memory_bytes", "Resident memory per process", labels=["role"])
        cpu = CounterMetricFamily("roxi_cpu_seconds", "CPU time (user + system) per process, across restarts",
                                  labels=["role"])
        state = GaugeMetricFamily("roxi_role_state", "1 for the state each process is in", labels=["role", "state"])
        restarts = CounterMetricFamily("roxi_role_restarts", "Restarts of each role by the supervisor",
                                       labels=["role"])
        mapped = GaugeMetricFamily("roxi_mapped_vectors_bytes", "Bytes of the vectors file the query server maps",
                                   labels=["role"])
        for row in [{**sup, "name": "supervisor"}, *rows]:
            name = row["name"]
            if row.get("rss") is not None:
                memory.add_metric([name], row["rss"])
            if name == "supervisor":
                if row.get("cpu_seconds") is not None:
                    cpu.add_metric([name], row["cpu_seconds"])
            else:
                cpu.add_metric([name], c.total(name, "cpu_seconds"))
                restarts.add_metric([name], row.get("restarts") or 0)
            for s in ROLE_STATES:
                state.add_metric([name, s], 1 if row.get("state") == s else 0)
            if row.get("mapped_bytes") is not None:
                mapped.add_metric([name], row["mapped_bytes"])
        yield from (memory, cpu, state, restarts, mapped)

        queries = [r["name"] for r in rows if r.get("role") == "query"]
        embedders = [r["name"] for r in rows if r.get("role") == "embedder"]
        indexers = [r["name"] for r in rows if r.get("role") == "indexer"]
        served = CounterMetricFamily("roxi_queries", "Queries answered, by mode", labels=["mode"])
        duration = HistogramMetricFamily("roxi_query_duration_seconds", "Time to answer a query, by mode",
                                         labels=["mode"])
        for mode in ("hybrid", "dense", "lexical"):
            counts, total = _histogram(c, queries, f"query_seconds.{mode}")
            served.add_metric([mode], sum(counts))
            duration.add_metric([mode], _cumulative(counts), total)
        yield served
        yield duration
        errors = CounterMetricFamily("roxi_query_errors", "Query requests answered with an error, by code",
                                     labels=["code"])
        codes = sorted({k.split(".", 1)[1] for n in queries for k in _keys(c, n) if k.startswith("errors.")})
        for code in codes:
            errors.add_metric([code], sum(c.total(n, f"errors.{code}") for n in queries))
        yield errors

        yield _counter("roxi_chunks_embedded", "Chunks embedded by the embedders",
                       sum(c.total(n, "embedded") for n in embedders))
        counts, total = _histogram(c, embedders, "batch_seconds")
        batch = HistogramMetricFamily("roxi_embedding_batch_duration_seconds", "Time to embed one batch")
        batch.add_metric([], _cumulative(counts), total)
        yield batch
        yield _counter("roxi_commits", "Commits of vectors (the commit protocol)",
                       sum(c.total(n, "commits") for n in indexers))
        yield _counter("roxi_rows_committed", "Vector rows committed", sum(c.total(n, "rows_committed") for n in indexers))
        counts, total = _histogram(c, indexers, "commit_seconds")
        commit = HistogramMetricFamily("roxi_commit_duration_seconds", "Time of one commit (append, fsync, SQLite)")
        commit.add_metric([], _cumulative(counts), total)
        yield commit

        backups = status.get("backups") or {}
        yield _gauge("roxi_backups", "Backups on disk", backups.get("count"))
        yield _counter("roxi_backups_taken", "Backups this supervisor took (scheduled and milestones)",
                       backups.get("taken"))
        if backups.get("last_epoch") is not None:
            yield _gauge("roxi_backup_last_success_timestamp_seconds", "Unix time of the newest backup",
                         backups["last_epoch"])


def _keys(c: Counters, name: str) -> Iterable[str]:
    return set(c.base.get(name, {})) | set(c.last.get(name, {}))


def _histogram(c: Counters, names: list[str], key: str) -> tuple[list[float], float]:
    counts = [sum(c.total(n, f"{key}.counts.{i}") for n in names) for i in range(len(BUCKETS) + 1)]
    return counts, sum(c.total(n, f"{key}.sum") for n in names)


def _cumulative(counts: list[float]) -> list[tuple[str, float]]:
    out, running = [], 0.0
    for bound, n in zip((*map(str, BUCKETS), "+Inf"), counts):
        running += n
        out.append((bound, running))
    return out


def _gauge(name: str, doc: str, value: Any) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily(name, doc)
    family.add_metric([], value or 0)
    return family


def _counter(name: str, doc: str, value: Any) -> Any:
    from prometheus_client.core import CounterMetricFamily

    family = CounterMetricFamily(name, doc)
    family.add_metric([], value or 0)
    return family


def content_type() -> str:
    from prometheus_client import CONTENT_TYPE_LATEST

    return CONTENT_TYPE_LATEST


def render(status: dict[str, Any], counters: Counters) -> bytes:
    """The exposition of one snapshot (status as the dashboard builds it, plus "backups")."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(status, counters))
    return generate_latest(registry)
