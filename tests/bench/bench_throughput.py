"""Query throughput with 1, 4 and 16 concurrent clients through the real query server (issue 7).

    .venv/bin/python -m tests.bench.bench_throughput [--sizes 10000,100000] [--clients 1,4,16] [--seconds 3]

For each size N (dim 384, generated unit vectors through the durable commit path) a real
system runs with the result cache off. Each client is its own process (multiprocessing,
spawn) with its own QueryClient socket, so no client GIL is shared: it connects, sends one
warm-up query, waits at a barrier with the others, then sends `query_vector(k=10,
with_text=False)` with random unit vectors back to back for `--seconds`. Queries/s is all
answers over that window; p50/p99 are over every answered query. The query server answers
one query at a time, so on a machine with few cores more clients mostly measure queueing.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import numpy as np
import psutil

from ..corpus import populate
from .common import bench_system, stop_on_sigterm, table

DIM = 384
K = 10


def client(endpoint: str, seed: int, seconds: float, barrier, results) -> None:
    """One client process: back-to-back queries for `seconds` after the barrier."""
    from roxi_mp.client import QueryClient

    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((256, DIM), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    latencies = []
    with QueryClient(endpoint, timeout=60) as qc:
        qc.query_vector(vecs[0], k=K, with_text=False)
        barrier.wait()
        deadline = time.perf_counter() + seconds
        i = 0
        while (started := time.perf_counter()) < deadline:
            qc.query_vector(vecs[i % len(vecs)], k=K, with_text=False)
            latencies.append(time.perf_counter() - started)
            i += 1
    results.put(latencies)


def measure_clients(endpoint: str, clients: int, seconds: float) -> dict:
    ctx = mp.get_context("spawn")  # a forked child would inherit this process's zmq context
    barrier, results = ctx.Barrier(clients + 1), ctx.Queue()
    procs = [ctx.Process(target=client, args=(endpoint, 1000 + i, seconds, barrier, results))
             for i in range(clients)]
    for p in procs:
        p.start()
    barrier.wait(timeout=120)  # every client connected and warmed up
    started = time.perf_counter()
    latencies = [x for _ in procs for x in results.get(timeout=seconds + 120)]
    wall = time.perf_counter() - started
    for p in procs:
        p.join(timeout=10)
    arr = np.array(latencies)
    return {"clients": clients, "queries": len(arr), "seconds": wall, "qps": len(arr) / wall,
            "p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99))}


def measure(n: int, clients: list[int], seconds: float) -> dict:
    with bench_system(f"throughput-{n}", hashing__dim=DIM, query__idle_seconds=3600.0,
                      query__cache_entries=0) as s:
        populate(s.cfg, rows=n)
        s.start()
        endpoint = s.cfg.endpoint("query")
        return {"n": n, "runs": [measure_clients(endpoint, c, seconds) for c in clients]}


def measure_all(sizes: list[int], clients: list[int], seconds: float) -> dict:
    return {"cores": psutil.cpu_count(), "seconds": seconds, "k": K,
            "sizes": [measure(n, clients, seconds) for n in sizes]}


def markdown(data: dict) -> str:
    rows = [[f"{size['n']:,}", r["clients"], f"{r['qps']:,.0f}", f"{r['p50'] * 1e3:.2f}", f"{r['p99'] * 1e3:.2f}",
             f"{r['queries']:,}"] for size in data["sizes"] for r in size["runs"]]
    return "\n".join([
        f"## Query throughput, concurrent client processes (dim {DIM}, k {K}, with_text off, "
        f"{data['cores']} cores, {data['seconds']:g} s per run)", "",
        table(["N", "clients", "queries/s", "p50 ms", "p99 ms", "queries"], rows), "",
        f"The machine has {data['cores']} cores: with more clients than that, latency is mostly queueing.",
    ]) + "\n"


def run(quick: bool) -> dict:
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    data = measure_all(sizes, [1, 4, 16], 3.0 if quick else 10.0)
    return {"name": "throughput", "markdown": markdown(data), "data": data}


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    data = measure_all([int(x) for x in args.sizes.split(",") if x],
                       [int(x) for x in args.clients.split(",") if x], args.seconds)
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
