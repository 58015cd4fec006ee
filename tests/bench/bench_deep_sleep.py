"""Issue 22's figures: the whole system asleep, work from asleep, a query from asleep.

    .venv/bin/python -m tests.bench.bench_deep_sleep [--rows 1000000] [--repeats 5]

Every system runs MiniLM (int8, as `./run.sh` starts it), with `supervisor.suspend` on
(issue 22: the embedders and the indexer exit in deep sleep) and off (before: they stay
up, the embedder's model unloaded), the two taking turns:

1. **Asleep, sample corpus**: the sample embedded and a text query answered, then
   `roxi sleep`; once every role is asleep or suspended (and the query model process
   gone), the RSS of every process of the data directory, read from /proc.
2. **Ingest from asleep**: `roxi ingest` (the command line, a fresh interpreter) of one
   new ~300-word document; seconds from its launch until the store shows the first of its
   chunks committed, polled every 10 ms; then `roxi sleep` and the next, `--repeats` times.
3. **A query from asleep**: the first text query's answer time with everything asleep
   (the query server maps the vectors and starts its model process).
4. **At `--rows`** (random unit vectors under the MiniLM model id, through the commit
   path; 0 skips it): step 1 again after a full-scan text query, suspend on only. The
   bound is 110 MB there too: nothing asleep may grow with the store.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil

from roxi_mp import service

from ..conftest import clean_env, roxi_processes
from ..corpus import populate, write_corpus
from .common import MB, bench_system, machine, median, stop_on_sigterm, table, write_results

#: the bound of acceptance 1, bytes
BOUND = 110 * MB
#: the bound of acceptance 2, seconds
FIRST_COMMIT_BOUND = 3.0
#: what settles a system quickly: roles idle this long sleep (30 s by default)
FAST_IDLE = {"embedder__idle_seconds": 3.0, "query__idle_seconds": 3600.0}
QUERY = "heart attack"
#: states of a role in whole-system deep sleep
SLEEPING = ("asleep", "suspended")


def minilm_system(name: str, *, suspend: bool, sample: bool = True):
    return bench_system(name, embedder__backend="minilm", supervisor__ingest_sample_on_empty=sample,
                        supervisor__suspend=suspend, **FAST_IDLE)


def query_model_running(s) -> bool:
    return any("roxi_mp.model_process" in " ".join(p.cmdline()) for p in roxi_processes(s.cfg.data_dir)
               if p.is_running())


def sleep_all(s, *, timeout: float = 120.0) -> None:
    """`roxi sleep`, then wait until every role is asleep or suspended and its model child gone."""
    service.sleep_roles(s.cfg, None, wake=False)
    s.wait_for(lambda: all(r["state"] in SLEEPING for r in s.status()["roles"]) and not query_model_running(s),
               timeout=timeout, what="every role asleep or suspended")


def processes_rss(s) -> dict[str, int]:
    """RSS of every process of the data directory (the supervisor, its roles, model children)."""
    out = {}
    for p in roxi_processes(s.cfg.data_dir):
        try:
            cmd = p.cmdline()
            name = cmd[cmd.index("--name") + 1] if "--name" in cmd else cmd[2] if len(cmd) > 2 else "?"
            out[f"{name}"] = out.get(name, 0) + p.memory_info().rss
        except (psutil.Error, ValueError):
            continue
    return out


def committed(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT count(*) FROM chunks WHERE row IS NOT NULL").fetchone()[0]
    finally:
        conn.close()


def ingest_from_asleep(s, doc: Path) -> float:
    """Seconds from launching `roxi ingest DOC` to the first of its chunks committed."""
    before = committed(s.cfg.db_path)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "roxi_mp.cli", *s.cfg.to_argv(), "ingest", str(doc)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env())
    deadline = started + 120.0
    while committed(s.cfg.db_path) <= before:
        if time.perf_counter() > deadline:
            raise RuntimeError("no chunk committed 120 s after `roxi ingest`")
        time.sleep(0.01)
    took = time.perf_counter() - started
    proc.wait(timeout=60)
    s.wait_indexed(s.stats().chunks, timeout=120)
    return took


def query_from_asleep(s) -> float:
    with s.query_client(timeout=60) as client:
        started = time.perf_counter()
        hits = client.query(QUERY, k=10)
        took = time.perf_counter() - started
    assert hits, "no answer"
    return took


def measure_setting(suspend: bool, docs: Path, *, repeats: int) -> dict:
    with minilm_system(f"deep-sleep-{'on' if suspend else 'off'}", suspend=suspend) as s:
        s.start(timeout=120)
        s.wait_indexed(s.stats().chunks, timeout=300)
        query_from_asleep(s)  # real work before sleeping: the model loaded and a query answered
        sleep_all(s)
        asleep = processes_rss(s)
        queries = [query_from_asleep(s)]
        ingests = []
        for i in range(repeats):
            sleep_all(s)
            ingests.append(ingest_from_asleep(s, docs / f"doc-{i:05d}.md"))
        sleep_all(s)
        queries.append(query_from_asleep(s))
        return {"suspend": suspend, "asleep_rss": asleep, "asleep_total": sum(asleep.values()),
                "first_commit_s": ingests, "query_from_asleep_s": queries}


def measure_rows(rows: int) -> dict:
    with minilm_system(f"deep-sleep-{rows}", suspend=True, sample=False) as s:
        started = time.perf_counter()
        populate(s.cfg, rows=rows)
        populate_s = time.perf_counter() - started
        s.start(timeout=120)
        took = query_from_asleep(s)  # a full scan: every row mapped
        sleep_all(s)
        asleep = processes_rss(s)
        return {"rows": rows, "populate_s": round(populate_s, 1), "first_query_s": took,
                "asleep_rss": asleep, "asleep_total": sum(asleep.values())}


def mb(value: int) -> str:
    return f"{value / MB:.1f}"


def run(quick: bool = False, *, rows: int | None = None, repeats: int = 3) -> dict:
    rows = (100_000 if quick else 1_000_000) if rows is None else rows
    root = Path(f"/tmp/roxi-bench-deep-sleep-docs-{time.time_ns()}")
    write_corpus(root, docs=repeats, words=300, seed=22)
    settings = [measure_setting(suspend, root, repeats=repeats) for suspend in (True, False, True, False)]
    on = [r for r in settings if r["suspend"]]
    off = [r for r in settings if not r["suspend"]]
    at_rows = measure_rows(rows) if rows else None
    names = sorted({n for r in settings for n in r["asleep_rss"]})
    lines = ["# Deeper sleep (issue 22)", "",
             "## 1. Asleep on the sample corpus: RSS of every process, MB (two runs per setting)", "",
             table(["process", *[f"suspend {'on' if r['suspend'] else 'off'}" for r in settings]],
                   [[n, *[mb(r["asleep_rss"].get(n, 0)) if n in r["asleep_rss"] else "-" for r in settings]]
                    for n in names]
                   + [["**all**", *[f"**{mb(r['asleep_total'])}**" for r in settings]]]),
             "", f"Bound: {mb(BOUND)} MB: "
             f"{'pass' if all(r['asleep_total'] <= BOUND for r in on) else 'FAIL'} with suspend on.", "",
             "## 2. `roxi ingest` of one document from asleep: seconds to its first committed chunk", "",
             table(["setting", "median", "min", "max", "all"],
                   [[f"suspend {name}", f"{median(v):.2f}", f"{min(v):.2f}", f"{max(v):.2f}",
                     ", ".join(f"{x:.2f}" for x in v)]
                    for name, group in (("on", on), ("off", off))
                    for v in [[x for r in group for x in r["first_commit_s"]]]]),
             "", f"Bound: {FIRST_COMMIT_BOUND:g} s: "
             f"{'pass' if max(x for r in on for x in r['first_commit_s']) <= FIRST_COMMIT_BOUND else 'FAIL'} "
             "(the worst of the suspend-on runs).", "",
             "## 3. A text query from asleep: seconds to its answer", "",
             table(["setting", "median", "all"],
                   [[f"suspend {name}", f"{median(v):.3f}", ", ".join(f"{x:.3f}" for x in v)]
                    for name, group in (("on", on), ("off", off))
                    for v in [[x for r in group for x in r["query_from_asleep_s"]]]])]
    if at_rows:
        lines += ["", f"## 4. Asleep at {at_rows['rows']:,} rows (suspend on), after a full-scan text query "
                  f"({at_rows['first_query_s']:.2f} s)", "",
                  table(["process", "MB"], [[n, mb(v)] for n, v in sorted(at_rows["asleep_rss"].items())]
                        + [["**all**", f"**{mb(at_rows['asleep_total'])}**"]]),
                  "", f"Bound: {mb(BOUND)} MB: {'pass' if at_rows['asleep_total'] <= BOUND else 'FAIL'}."]
    markdown = "\n".join(lines) + "\n"
    return {"name": "bench_deep_sleep", "markdown": markdown,
            "data": {"machine": machine(), "settings": settings, "at_rows": at_rows}}


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="the large store's rows (0: skip it)")
    parser.add_argument("--repeats", type=int, default=3, help="ingests from asleep per run")
    args = parser.parse_args(argv)
    result = run(rows=args.rows, repeats=args.repeats)
    print(result["markdown"])
    print(write_results("bench_deep_sleep", result["data"], result["markdown"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
