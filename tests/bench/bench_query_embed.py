"""Text queries embedded inline or off the query server's loop (issue 16).

    .venv/bin/python -m tests.bench.bench_query_embed [--quick] [--skip-minilm] [--skip-slow]

1. Local models: text-query p50/p99 through ZeroMQ (QueryClient, 10k rows, dim 384, no
   result cache, a new text each time) with the embedding inline on the loop (as shipped
   for hashing and the MiniLM model process) and handed to a worker thread and back
   (`Embedder.remote` forced on: what the http backend does). Two query servers, one per
   way, on two copies of the store, queried alternately so both share the machine's mood.
   Issue 21 will hold text queries to the model's own p50 + 1 ms: the difference of the
   two p50s is what the handoff would cost there.
2. A slow, busy embedding service (tests/integration/test_query_embed.run_scenario: the
   fake at 0.5 s per text, one request at a time, busy with ingest): p50/p99 of vector
   queries alone and while 20 text queries wait for the service, and of the text queries.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import time
from typing import Iterator

import numpy as np

from roxi_mp.client import QueryClient
from roxi_mp.errors import RoxiError

from ..corpus import populate
from ..fake_openai import FakeOpenAI
from ..integration.test_query_embed import DEADLINE, run_scenario, slow_service_settings
from .common import bench_system, machine, make_system, stop_on_sigterm, table, temp_root, write_results

#: the query server, with Embedder.remote forced to argv[1] == "off-loop" for every local backend
SERVE = ("import sys; from roxi_mp.embedders.base import Embedder; "
         "Embedder.remote = sys.argv.pop(1) == 'off-loop'; "
         "from roxi_mp.roles.query_server import main; sys.exit(main(sys.argv[1:]))")
MODES = ("inline", "off-loop")


@contextlib.contextmanager
def query_server(backend: str, mode: str, rows: int) -> Iterator[QueryClient]:
    """A lone query server (no supervisor) over `rows` random rows, and a client of it."""
    root = temp_root(f"qembed-{backend}-{mode}")
    s = make_system(root, embedder__backend=backend, hashing__dim=384, query__cache_entries=0,
                    query__idle_seconds=3600.0)
    s.cfg.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    populate(s.cfg, rows=rows)
    log = open(root / "query.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", SERVE, mode, *s.cfg.to_argv()], stdout=log, stderr=log)
    client = QueryClient.for_config(s.cfg, timeout=60.0)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client.ping()
                break
            except RoxiError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"query server ({backend}, {mode}) did not start; see {root}/query.log")
                time.sleep(0.1)
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def local(backend: str, *, queries: int, rows: int = 10_000) -> dict:
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    with contextlib.ExitStack() as stack:
        clients = {mode: stack.enter_context(query_server(backend, mode, rows)) for mode in MODES}
        for i in range(-20, queries):  # 20 to warm up (the first wakes the server, loads the model)
            for mode in (MODES if i % 2 else MODES[::-1]):
                started = time.perf_counter()
                clients[mode].query(f"query {i} {mode}: crystals in a swollen joint", k=10, with_text=False)
                if i >= 0:
                    times[mode].append(time.perf_counter() - started)
    ms = {mode: (1000 * float(np.percentile(t, 50)), 1000 * float(np.percentile(t, 99))) for mode, t in times.items()}
    return {"backend": backend, "queries": queries, "rows": rows, "ms": ms,
            "handoff_p50_ms": ms["off-loop"][0] - ms["inline"][0]}


def slow_service() -> dict:
    with FakeOpenAI(dim=64, seconds_per_text=0.5, concurrency=1) as fake, \
            bench_system("query-embed-slow", **slow_service_settings(fake)) as s:
        s.start()
        out = run_scenario(s, s.cfg.data_dir.parent, baseline=200)
    answered = [seconds for seconds, code, _ in out["texts"] if code == "hits"]
    codes = [code for _, code, _ in out["texts"]]

    def pct(values: list[float]) -> tuple[float, float]:
        return (1000 * float(np.percentile(values, 50)), 1000 * float(np.percentile(values, 99))) if values else (0, 0)

    return {"vector_alone_ms": pct(out["alone"]), "vector_during_ms": pct(out["during"]),
            "text_answered_ms": pct(answered), "text_all_ms": pct([t for t, _, _ in out["texts"]]),
            "answered": len(answered), "embed_timeout": codes.count("embed_timeout"), "other": len(codes) - len(answered)
            - codes.count("embed_timeout"), "restarted": out["after"]["pid"] != out["before"]["pid"]
            or out["after"]["restarts"] != out["before"]["restarts"], "vector_during_n": len(out["during"])}


def markdown(results: list[dict], slow: dict | None) -> str:
    parts = ["### Text queries: embedding inline vs off the loop (local models)\n",
             table(["backend", "rows", "queries", "inline p50 / p99 ms", "off-loop p50 / p99 ms", "handoff p50 ms"],
                   [[r["backend"], r["rows"], r["queries"], "%.3f / %.3f" % r["ms"]["inline"],
                     "%.3f / %.3f" % r["ms"]["off-loop"], "%+.3f" % r["handoff_p50_ms"]] for r in results])]
    if slow is not None:
        parts += [f"\n### A slow, busy embedding service (0.5 s per text, one request at a time; "
                  f"deadline {DEADLINE:g} s)\n",
                  table(["queries", "p50 / p99 ms"],
                        [["vector, service busy with ingest", "%.1f / %.1f" % slow["vector_alone_ms"]],
                         [f"vector, while 20 text queries wait (n={slow['vector_during_n']})",
                          "%.1f / %.1f" % slow["vector_during_ms"]],
                         [f"text, answered ({slow['answered']})", "%.0f / %.0f" % slow["text_answered_ms"]],
                         [f"text, all (embed_timeout: {slow['embed_timeout']}, other errors: {slow['other']})",
                          "%.0f / %.0f" % slow["text_all_ms"]]]),
                  f"\nquery server restarted: {slow['restarted']}"]
    return "\n".join(parts) + "\n"


def run(quick: bool, *, minilm: bool = True, slow: bool = True) -> dict:
    queries = 300 if quick else 1000
    results = [local("hashing", queries=queries)]
    if minilm:
        results.append(local("minilm", queries=queries // 2))
    slow_result = slow_service() if slow else None
    data = {"machine": machine(), "local": results, "slow_service": slow_result}
    return {"name": "query_embed", "markdown": markdown(results, slow_result), "data": data}


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--skip-slow", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.quick, minilm=not args.skip_minilm, slow=not args.skip_slow)
    print(result["markdown"])
    print(write_results("bench-query-embed", result["data"], result["markdown"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
