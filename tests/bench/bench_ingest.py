"""End-to-end ingest with the hashing backend (issue 7): chunks/s from `roxi ingest` to indexed.

    .venv/bin/python -m tests.bench.bench_ingest [--sizes 10000,100000] [--set embedder__count=2 ...]

For each size N: generated documents (tests.corpus.write_corpus, about 12 chunks of the
default 200 words / 40 overlap each) are written outside the timing; then a real system
(supervisor, embedders, indexer with durable commits, query server; hashing backend, dim
384) runs the `roxi ingest` CLI in a subprocess, and the clock runs from starting that
subprocess until `committed_rows` reaches its chunk count (polled every 0.1 s, then checked
against the store's stats). Ingest and indexing overlap: embedders claim chunks while the
CLI is still adding documents. CPU seconds of every process over that time (supervisor,
each role, the CLI, and the rest of the machine's load) show where the time goes.
Acceptance: >= 5,000 chunks/s end to end.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import psutil

from roxi_mp.store import Store

from ..conftest import TEST_DEFAULTS, clean_env
from ..corpus import write_corpus
from .common import bench_system, stop_on_sigterm, table

DIM = 384
#: issue 7's acceptance bound, chunks/s end to end
BOUND = 5_000
#: chunks one generated document of WORDS words makes with the default chunking
CHUNKS_PER_DOC, WORDS = 12, 2000
#: configuration benchmarked, over tests.conftest.TEST_DEFAULTS (see the module docstring)
CONFIG: dict[str, Any] = {
    "hashing__dim": DIM,
    "embedder__count": 1,
    "embedder__batch_size": 512,
    "embedder__poll_seconds": 0.05,
    "indexer__commit_max_rows": 8192,
    "indexer__commit_max_ms": 100,
    "backup__milestones": False,
}


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, p in procs.items():
        try:
            t = p.cpu_times()
            out[name] = t.user + t.system
        except psutil.Error:
            out[name] = float("nan")
    return out


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all cores), to see load from outside."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(n: int, config: dict[str, Any]) -> dict:
    with bench_system(f"ingest-{n}", **config) as s:
        docs = s.cfg.data_dir.parent / "docs"
        write_corpus(docs, docs=max(1, n // CHUNKS_PER_DOC), words=WORDS)
        s.start()
        roles = s.status()["roles"]
        # A role suspended (no pid) is not this process: psutil.Process(None) would be.
        procs = {"supervisor": psutil.Process(s.proc.pid),
                 **{r["name"]: psutil.Process(r["pid"]) for r in roles if r["pid"]}}
        cpu_before, children_before, busy_before = cpu_seconds(procs), children_cpu(), machine_busy()
        started = time.perf_counter()
        cli = subprocess.run([sys.executable, "-m", "roxi_mp.cli", *s.cfg.to_argv(), "ingest", str(docs), "--json"],
                             capture_output=True, text=True, env=clean_env(), check=True)
        ingest_s = time.perf_counter() - started
        cli_cpu = children_cpu() - children_before
        chunks = json.loads(cli.stdout)["chunks"]
        with Store(s.cfg.db_path) as store:
            indexed_at_return = store.committed_rows()
            while store.committed_rows() < chunks:
                if time.perf_counter() - started > 3600 or s.proc.poll() is not None:
                    raise RuntimeError(f"ingest of {chunks} chunks did not finish\n{s.logs()}")
                time.sleep(0.1)
        total_s = time.perf_counter() - started
        cpu_after = cpu_seconds(procs)
        stats = s.stats()
        assert stats.indexed == stats.chunks == chunks, stats
        cpu = {name: cpu_after[name] - cpu_before[name] for name in procs}
        cpu["ingest CLI"] = cli_cpu
        cpu["other load"] = machine_busy() - busy_before - sum(cpu.values())
        info = {r["name"]: {k: r.get(k) for k in ("embedded", "batches", "yields", "commits")
                            if r.get(k) is not None} for r in s.status()["roles"]}
        return {"n": n, "chunks": chunks, "ingest_cli_s": ingest_s, "indexed_at_return": indexed_at_return,
                "total_s": total_s,
                "chunks_per_s": chunks / total_s, "pass": chunks / total_s >= BOUND, "cpu_s": cpu,
                "roles": info}


def measure_all(sizes: list[int], config: dict[str, Any]) -> dict:
    results = [measure(n, config) for n in sizes]
    return {"bound_chunks_per_s": BOUND, "config": {**TEST_DEFAULTS, **config}, "cores": psutil.cpu_count(),
            "sizes": results}


def markdown(data: dict) -> str:
    results = data["sizes"]
    rows = [[f"{r['chunks']:,}", f"{r['ingest_cli_s']:.1f}", f"{r['indexed_at_return']:,}", f"{r['total_s']:.1f}",
             f"{r['chunks_per_s']:,.0f}", "pass" if r["pass"] else "FAIL"] for r in results]
    names = list(results[-1]["cpu_s"])
    cpu_rows = [[f"{r['chunks']:,}", f"{r['total_s']:.1f}"]
                + [f"{r['cpu_s'].get(name, float('nan')):.1f}" for name in names] for r in results]
    tuned = {k: v for k, v in data["config"].items()
             if k.split("__")[0] in ("embedder", "indexer", "hashing", "backup", "store")}
    return "\n".join([
        f"## Ingest end to end (hashing backend, dim {DIM}, durable commits, {data['cores']} cores)", "",
        table(["chunks", "`roxi ingest` returned s", "indexed by then", "all indexed s", "chunks/s",
               f">= {BOUND:,}/s"], rows), "",
        "CPU seconds per process over the whole ingest (2 cores give 2 CPU s per wall second):", "",
        table(["chunks", "wall s", *names], cpu_rows), "",
        "config: " + ", ".join(f"`{k.replace('__', '.')} = {v}`" for k, v in sorted(tuned.items())),
    ]) + "\n"


def run(quick: bool) -> dict:
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    data = measure_all(sizes, CONFIG)
    return {"name": "ingest", "markdown": markdown(data), "data": data}


def parse_setting(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    return key, json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION__KEY=VALUE",
                        help="override a setting of CONFIG, e.g. embedder__count=2")
    args = parser.parse_args(argv)
    config = {**CONFIG, **dict(parse_setting(s) for s in args.set)}
    data = measure_all([int(x) for x in args.sizes.split(",") if x], config)
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
