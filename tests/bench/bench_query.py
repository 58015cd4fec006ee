"""Query latency through ZeroMQ vs the same FAISS search in-process, and the memory bandwidth.

    .venv/bin/python -m tests.bench.bench_query [--sizes 10000,100000] [--queries 200]

For each size N (dim 384, generated unit vectors through the durable commit path), in one
run so the ratios share the machine's mood: p50/p99 of single queries through the real
query server (QueryClient, vectors sent as float32 frames, `with_text` off), p50/p99 of
`index.search` in this process on the same mapped file, and p50 through a bare ZeroMQ
server doing the same search and nothing else (tests/bench/bare_server.py: the floor that
ZeroMQ and a process boundary set on this machine); the three alternate, and their order
rotates. Also the implied GB/s scanned, the query server's RSS, and the machine's
read bandwidth measured as a numpy sum over a large array. Issue 7's acceptance 2 wants
ZeroMQ p50 <= 1.1 x in-process p50 at 100k; acceptance 3 wants the exact scan at 1M at
>= 0.8 x the memory bandwidth. Issue 21's acceptance 3 wants our p50 <= the bare server's
p50 + 0.25 ms at 10k and 100k, in the same run: the "ours - bare" column, with its range
over the run's slices; beside it the median of the per-query differences (each query's two
answers are taken back to back, so a drift of the machine's speed cancels out).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from typing import Callable, Iterator

import faiss
import numpy as np
import zmq

from roxi_mp.vectors import open_index

from ..corpus import populate
from .common import bench_system, machine, rss, stop_on_sigterm, table, write_results

DIM = 384
#: slices of a run over which the ratios are also taken, for their spread
BLOCKS = 6
#: issue 21's bound on our p50 over the bare server's, seconds
OVER_BARE_BOUND = 0.25e-3


def memory_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes/s of a sequential read: numpy sum over a float32 array (best of `repeats`)."""
    data = np.ones(int(gib * 2**30) // 4, dtype=np.float32)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.nbytes / best


def percentiles(samples: list[float]) -> tuple[float, float]:
    arr = np.array(samples)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def measure(n: int, queries: int) -> dict:
    with bench_system(f"query-{n}", hashing__dim=DIM, query__idle_seconds=3600.0, query__cache_entries=0) as s:
        populate(s.cfg, rows=n)
        s.start()
        rng = np.random.default_rng(7)
        vecs = rng.standard_normal((queries, DIM), dtype=np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        zmq_times, local_times, bare_times = [], [], []
        faiss.omp_set_num_threads(1)
        local = open_index(s.cfg.vectors_path, rows=n)
        with s.query_client(timeout=60) as client, bare_server(s.cfg, n) as dealer:
            client.query_vector(vecs[0], k=10, with_text=False)  # wake and map
            local.search(vecs[:1], 10)
            bare_search(dealer, vecs[0])
            paths = [timed_into(zmq_times, lambda v: client.query_vector(v, k=10, with_text=False)),
                     timed_into(local_times, lambda v: local.search(v[None, :], 10)),
                     timed_into(bare_times, lambda v: bare_search(dealer, v))]
            for i, v in enumerate(vecs):  # rotate, so every path sees the same machine
                for path in paths[i % 3:] + paths[:i % 3]:
                    path(v)
            query_rss = rss(s.pid("query"))
        del local
        zp50, zp99 = percentiles(zmq_times)
        lp50, lp99 = percentiles(local_times)
        bp50, _ = percentiles(bare_times)
        scanned = n * DIM * 2
        return {"n": n, "zmq_p50": zp50, "zmq_p99": zp99, "local_p50": lp50, "local_p99": lp99,
                "ratio_p50": zp50 / lp50, "bare_p50": bp50, "bare_ratio_p50": bp50 / lp50,
                "ratio_blocks": block_ratios(zmq_times, local_times),
                "bare_ratio_blocks": block_ratios(bare_times, local_times),
                "over_bare_p50": zp50 - bp50, "over_bare_blocks": block_differences(zmq_times, bare_times),
                "over_bare_paired": float(np.median(np.array(zmq_times) - np.array(bare_times))),
                "local_gbps": scanned / lp50 / 1e9, "zmq_gbps": scanned / zp50 / 1e9, "query_rss": query_rss}


def block_ratios(times: list[float], reference: list[float], blocks: int = BLOCKS) -> list[float]:
    """p50 ratio in each of `blocks` consecutive slices of the run: how far one run's ratio
    can be trusted on a machine whose speed drifts (the spread the issue asks for)."""
    size = max(1, len(times) // blocks)
    return [float(np.median(times[i:i + size]) / np.median(reference[i:i + size]))
            for i in range(0, size * blocks, size) if times[i:i + size]]


def block_differences(times: list[float], reference: list[float], blocks: int = BLOCKS) -> list[float]:
    """p50 difference in each of `blocks` consecutive slices of the run, seconds."""
    size = max(1, len(times) // blocks)
    return [float(np.median(times[i:i + size]) - np.median(reference[i:i + size]))
            for i in range(0, size * blocks, size) if times[i:i + size]]


def spread(ratio: float, blocks: list[float]) -> str:
    return f"{ratio:.2f} ({min(blocks):.2f}-{max(blocks):.2f})"


def timed_into(times: list[float], fn: Callable[[np.ndarray], object]) -> Callable[[np.ndarray], None]:
    """`fn`, appending how long each call took to `times`."""
    def path(v: np.ndarray) -> None:
        started = time.perf_counter()
        fn(v)
        times.append(time.perf_counter() - started)
    return path


@contextlib.contextmanager
def bare_server(cfg, rows: int, *, ours: bool = False, text: bool = False) -> Iterator[zmq.Socket]:
    """A DEALER connected to tests/bench/bare_server.py over the same file (searched through
    our Searcher, approximate index included, if `ours`; embedding query texts with the
    configured model, through our Searcher, if `text`); stopped afterwards."""
    endpoint = f"ipc://{cfg.run_dir / 'bare.sock'}"
    setup = [str(cfg.config_path), str(cfg.data_dir)] if ours or text else []
    proc = subprocess.Popen([sys.executable, "-m", "tests.bench.bare_server", *(["--text"] if text else []),
                             str(cfg.vectors_path), str(rows), endpoint, *setup])
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    try:
        yield dealer
        dealer.send_multipart([b"", b""])  # an empty frame stops it
        dealer.poll(10_000)
    finally:
        dealer.close()
        ctx.term()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bare_search(dealer: zmq.Socket, vector: np.ndarray | str) -> None:
    """One request to the bare server, a vector (or a text, to a `--text` one), and its reply."""
    dealer.send_multipart([b"", vector.encode() if isinstance(vector, str) else vector.tobytes()])
    if not dealer.poll(60_000):
        raise TimeoutError("the bare ZeroMQ server did not answer within 60 s")
    dealer.recv_multipart()


def run(quick: bool, *, sizes: list[int] | None = None, queries: int | None = None) -> dict:
    sizes = sizes or ([10_000, 100_000] if quick else [10_000, 100_000, 1_000_000])
    queries = queries or (200 if quick else 300)
    # the ceiling is the best this drifting machine shows, so it is read before and after the scans
    before = memory_bandwidth()
    results = [measure(n, queries) for n in sizes]
    bandwidths = [before, memory_bandwidth()]
    bandwidth = max(bandwidths)
    rows = [[f"{r['n']:,}", f"{r['zmq_p50'] * 1e3:.2f} / {r['zmq_p99'] * 1e3:.2f}",
             f"{r['local_p50'] * 1e3:.2f} / {r['local_p99'] * 1e3:.2f}", spread(r["ratio_p50"], r["ratio_blocks"]),
             f"{r['bare_p50'] * 1e3:.2f}", spread(r["bare_ratio_p50"], r["bare_ratio_blocks"]),
             spread(r["over_bare_p50"] * 1e3, [d * 1e3 for d in r["over_bare_blocks"]])
             + (" pass" if r["over_bare_p50"] <= OVER_BARE_BOUND else " FAIL"),
             f"{r['over_bare_paired'] * 1e3:.2f}",
             f"{r['local_gbps']:.1f} ({r['local_gbps'] * 1e9 / bandwidth:.2f})",
             f"{r['zmq_gbps']:.1f} ({r['zmq_gbps'] * 1e9 / bandwidth:.2f})", f"{r['query_rss'] / 2**20:.0f}"]
            for r in results]
    md = "\n".join([f"## Exact query latency, single queries, dim {DIM}, k 10, {queries} queries", "",
                    table(["N", "ZeroMQ p50 / p99 ms", "in-process faiss p50 / p99 ms",
                           f"ZeroMQ / in-process p50 (range over {BLOCKS} slices)", "bare ZeroMQ server p50 ms",
                           "bare / in-process p50 (range)",
                           "ours - bare p50 ms (range; bound 0.25)", "ours - bare, median of pairs ms",
                           "in-process GB/s (x bandwidth)", "end-to-end GB/s (x bandwidth)", "query RSS MB"], rows),
                    "", f"memory read bandwidth (numpy sum over 1 GiB, best of 5, before and after the scans): "
                    f"{bandwidth / 1e9:.1f} GB/s ({' and '.join(f'{b / 1e9:.1f}' for b in bandwidths)})"]) + "\n"
    return {"name": "query", "markdown": md,
            "data": {"bandwidth": bandwidth, "bandwidths": bandwidths, "queries": queries, "sizes": results}}


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args(argv)
    result = run(True, sizes=[int(n) for n in args.sizes.split(",") if n], queries=args.queries)
    path = write_results("query", {"machine": machine(), **result["data"]}, result["markdown"])
    print(result["markdown"])
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
