"""Search with hidden rows (issue 17, acceptance 3 and 6): cost of hiding rows, exactness, recall.

    .venv/bin/python -m tests.bench.bench_filter [--rows 100000] [--index hnsw] [--hidden 0.3]
        [--queries 200] [--latency-queries 500] [--tail 0.02]

A vectors file of N dim-384 rows (bench_ann's clustered, L2-normalised vectors) is written
in a temporary directory and searched in this process through roxi_mp.search.Searcher,
faiss on one thread, one query at a time:

- exact-search latency p50 / p99 with no filter, with (almost) nothing hidden (one row: a
  bitmap without any set bit hides nothing at all), with a random `--hidden` fraction
  hidden, and the same searched with faiss's selector alone (how every exact scan with
  hidden rows was made before roxi_mp.search asked for more rows without it; not held to
  the goal); the four are timed in turn for each query, so a neighbour's load on a shared
  machine falls on all of them alike. Goal: <= 1.1x.
- exact top-10 against a numpy brute force over the visible rows (float32 products of the
  file's float16 values), for `--queries` queries: it must be equal.
- for each `--index` kind (hnsw, ivf): an index built over the first (1 - tail) N rows, the
  rest searched exactly and merged; recall@10 against the same reference with the rows
  hidden (acceptance 3: >= 0.95 for hnsw at 100k with 30 % hidden), and without any hidden,
  and how many hidden rows came back (must be 0).
"""

from __future__ import annotations

import argparse
import shutil
import time

import faiss
import numpy as np

from roxi_mp import ann_build
from roxi_mp.config import Config
from roxi_mp.search import Searcher
from roxi_mp.vectors import VectorWriter

from .bench_ann import clustered, percentile
from .common import machine, stop_on_sigterm, table, temp_root, write_results

DIM = 384
K = 10
MODEL = "bench/filter"
#: rows written per append (a float32 batch of 64 MB)
BATCH = 40_000
#: untimed queries before the timed ones: the first ones fault the mapping in
WARMUP = 50
#: names the variant timed only to compare with (not held to the goal)
OLD_WAY = "(before)"
#: "each query's own H nearest rows hidden": the H measured
CORRELATED = (100, 300, 1000)


def make_store(root, rows: int) -> tuple[Config, np.ndarray]:
    """A vectors file of `rows` clustered unit vectors; returns its config and the float16
    rows as float32 (the numpy reference's matrix)."""
    cfg = Config(data_dir=root)
    root.mkdir(parents=True, exist_ok=True)
    make = clustered(rows)
    rng = np.random.default_rng(5)
    x = np.empty((rows, DIM), dtype=np.float32)
    with VectorWriter(cfg.vectors_path, dim=DIM, model_id=MODEL) as w:
        for start in range(0, rows, BATCH):
            batch = make(rng, min(BATCH, rows - start), DIM)
            w.append(batch)
            x[start:start + len(batch)] = batch.astype(np.float16)
        w.sync()
        w.publish(w.rows)
    return cfg, x


def reference(x: np.ndarray, hidden: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-K visible rows and their scores for each query, by brute force."""
    ids = np.empty((len(queries), K), dtype=np.int64)
    scores = np.empty((len(queries), K), dtype=np.float32)
    for start in range(0, len(queries), 20):
        s = queries[start:start + 20] @ x.T
        s[:, hidden] = -np.inf
        top = np.argpartition(-s, K, axis=1)[:, :K]
        order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1, kind="stable")
        ids[start:start + 20] = np.take_along_axis(top, order, axis=1)
        scores[start:start + 20] = np.take_along_axis(s, ids[start:start + 20], axis=1)
    return ids, scores


def searcher(cfg: Config, rows: int, hidden: np.ndarray | None) -> Searcher:
    s = Searcher(cfg, rows=rows)
    s.set_hidden(None if hidden is None else np.packbits(hidden, bitorder="little"))
    return s


def exact_latency(cfg: Config, n: int, hidden: np.ndarray, queries: np.ndarray) -> dict[str, dict]:
    one = np.zeros(n, dtype=bool)
    one[n // 2] = True
    plain, single, many = searcher(cfg, n, None), searcher(cfg, n, one), searcher(cfg, n, hidden)
    assert plain.hidden is None and single.tail_hidden == 1 and many.hidden.tail_params is not None
    variants = {"no filter": lambda q: plain.search(q, K), "1 row hidden": lambda q: single.search(q, K),
                f"{hidden.mean():.0%} hidden": lambda q: many.search(q, K),
                f"{hidden.mean():.0%} hidden, selector alone {OLD_WAY}":
                    lambda q: many.tail.search(q, K, params=many.hidden.tail_params)}
    names = list(variants)
    for q in queries[:WARMUP]:
        for search in variants.values():
            search(q[None, :])
    times: dict[str, list[float]] = {name: [] for name in names}
    for i, q in enumerate(queries[WARMUP:]):
        turn = i % len(names)
        for name in names[turn:] + names[:turn]:  # each variant goes first as often
            started = time.perf_counter()
            variants[name](q[None, :])
            times[name].append(time.perf_counter() - started)
    base = percentile(times["no filter"], 50)
    return {name: {"p50": percentile(t, 50), "p99": percentile(t, 99), "ratio": percentile(t, 50) / base}
            for name, t in times.items()}


def exactness(cfg: Config, x: np.ndarray, hidden: np.ndarray, queries: np.ndarray) -> dict:
    truth, truth_scores = reference(x, hidden, queries)
    s = searcher(cfg, len(x), hidden)
    equal = ties = 0
    for q, t, ts in zip(queries, truth, truth_scores):
        scores, rows = s.search(q[None, :], K)
        if rows.tolist() == t.tolist():
            equal += 1
        elif len(rows) == K and np.allclose(scores, ts, atol=1e-5):
            ties += 1  # the same scores: rows swapped between equal products
    return {"queries": len(queries), "equal": equal, "ties": ties}


def ann_recall(cfg: Config, x: np.ndarray, hidden: np.ndarray, queries: np.ndarray, kind: str,
               tail: float) -> dict:
    n = len(x)
    cfg.indexer.index = kind
    params = ann_build.BuildParams.from_config(cfg)
    params = ann_build.BuildParams(kind, params.hnsw_m, params.hnsw_ef_construction, params.ivf_lists, threads=2)
    started = time.perf_counter()
    ann_build.build(cfg.vectors_path, cfg.ann_path, params, rows=n - int(n * tail))
    build = time.perf_counter() - started
    faiss.omp_set_num_threads(1)
    out = {"kind": kind, "ann_rows": n - int(n * tail), "build_seconds": build}
    nothing = np.zeros(n, dtype=bool)
    for label, mask in (("filtered", hidden), ("unfiltered", nothing)):
        truth, _ = reference(x, mask, queries)
        s = searcher(cfg, n, mask)
        assert s.kind == kind
        found, times = [], []
        for q in queries:
            started = time.perf_counter()
            found.append(s.search(q[None, :], K)[1])
            times.append(time.perf_counter() - started)
        out[label] = {"recall": float(np.mean([len(set(f.tolist()) & set(t.tolist())) / K
                                                for f, t in zip(found, truth)])),
                      "short": sum(len(f) < K for f in found),
                      "hidden_returned": int(sum(mask[f].sum() for f in found)),
                      "p50": percentile(times, 50), "p99": percentile(times, 99)}
    out["correlated"] = correlated(cfg, x, queries)
    cfg.ann_path.unlink()
    cfg.indexer.index = "exact"
    return out


def correlated(cfg: Config, x: np.ndarray, queries: np.ndarray) -> dict[int, dict]:
    """Recall@K and p50 when each query's own H nearest rows are hidden, for each H."""
    n = len(x)
    s = Searcher(cfg, rows=n)
    out = {}
    for h in CORRELATED:
        recalls, times, leaked = [], [], 0
        for q in queries:
            scores = x @ q
            top = np.argpartition(-scores, h + K)[:h + K]
            top = top[np.argsort(-scores[top], kind="stable")]
            hidden = np.zeros(n, dtype=bool)
            hidden[top[:h]] = True
            s.set_hidden(np.packbits(hidden, bitorder="little"))
            started = time.perf_counter()
            found = s.search(q[None, :], K)[1]
            times.append(time.perf_counter() - started)
            leaked += int(hidden[found].sum())
            recalls.append(len(set(found.tolist()) & set(top[h:].tolist())) / K)
        out[h] = {"recall": float(np.mean(recalls)), "p50": percentile(times, 50),
                  "p99": percentile(times, 99), "hidden_returned": leaked}
    return out


def run(quick: bool, *, rows: int = 100_000, kinds: list[str] | None = None, fraction: float = 0.3,
        queries: int = 200, latency_queries: int = 500, tail: float = 0.02) -> dict:
    kinds = (["hnsw"] if quick else ["hnsw", "ivf"]) if kinds is None else kinds
    faiss.omp_set_num_threads(1)
    root = temp_root("filter")
    try:
        cfg, x = make_store(root / "data", rows)
        hidden = np.random.default_rng(7).random(rows) < fraction
        make = clustered(rows)
        timed = make(np.random.default_rng(99), WARMUP + latency_queries, DIM)
        checked = make(np.random.default_rng(98), queries, DIM)
        latency = exact_latency(cfg, rows, hidden, timed)
        exact = exactness(cfg, x, hidden, checked)
        anns = [ann_recall(cfg, x, hidden, checked, kind, tail) for kind in kinds]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return report(rows, fraction, tail, latency, exact, anns, queries)


def report(rows: int, fraction: float, tail: float, latency: dict, exact: dict, anns: list[dict],
           queries: int) -> dict:
    worst = max(v["ratio"] for name, v in latency.items() if not name.endswith(OLD_WAY))
    lines = [f"## Search with hidden rows: {rows:,} x {DIM}, k {K}, one thread (bench_filter.py)", "",
             table(["exact search", "p50 ms", "p99 ms", "p50 / no filter"],
                   [[name, f"{v['p50'] * 1e3:.2f}", f"{v['p99'] * 1e3:.2f}", f"{v['ratio']:.3f}"]
                    for name, v in latency.items()]),
             "", f"cost of hiding rows (goal <= 1.1x): {'pass' if worst <= 1.1 else 'FAIL'} (worst {worst:.3f}x)", "",
             f"exact top-{K} with {fraction:.0%} hidden vs numpy over visible rows: {exact['equal']}/{exact['queries']} "
             f"equal, {exact['ties']} equal up to tied scores: "
             f"{'pass' if exact['equal'] + exact['ties'] == exact['queries'] else 'FAIL'}"]
    if anns:
        lines += ["", table(["index", "rows indexed + tail", f"recall@{K} {fraction:.0%} hidden", "recall@10 none hidden",
                             "hidden rows returned", "short answers", "p50 / p99 ms hidden", "p50 / p99 ms none",
                             "build s (2 threads)", "bound (recall >= 0.95)"],
                            [[a["kind"], f"{a['ann_rows']:,} + {rows - a['ann_rows']:,}",
                              f"{a['filtered']['recall']:.3f}", f"{a['unfiltered']['recall']:.3f}",
                              a["filtered"]["hidden_returned"], a["filtered"]["short"],
                              f"{a['filtered']['p50'] * 1e3:.2f} / {a['filtered']['p99'] * 1e3:.2f}",
                              f"{a['unfiltered']['p50'] * 1e3:.2f} / {a['unfiltered']['p99'] * 1e3:.2f}",
                              f"{a['build_seconds']:.0f}",
                              "pass" if a["filtered"]["recall"] >= 0.95 and not a["filtered"]["hidden_returned"]
                              else "FAIL"] for a in anns]),
                  "", table(["index", *(f"own nearest {h} hidden: recall@{K}, p50 / p99 ms" for h in CORRELATED)],
                            [[a["kind"], *(f"{c['recall']:.3f}, {c['p50'] * 1e3:.2f} / {c['p99'] * 1e3:.2f}"
                                           + (f" ({c['hidden_returned']} hidden returned!)" if c["hidden_returned"] else "")
                                           for c in a["correlated"].values())] for a in anns]),
                  "", f"{queries} queries; index over the first {1 - tail:.0%} of the rows, the rest exact "
                      "(merged); defaults hnsw M 32, efConstruction 40, efSearch 128; ivf nprobe 16"]
    data = {"rows": rows, "dim": DIM, "hidden_fraction": fraction, "tail": tail, "exact_latency": latency,
            "exactness": exact, "ann": anns}
    return {"name": "filter", "markdown": "\n".join(lines) + "\n", "data": data}


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--index", default="hnsw", help="comma-separated approximate kinds (hnsw, ivf), or 'exact'")
    parser.add_argument("--hidden", type=float, default=0.3, help="fraction of rows hidden at random")
    parser.add_argument("--queries", type=int, default=200, help="queries checked against the reference")
    parser.add_argument("--latency-queries", type=int, default=500)
    parser.add_argument("--tail", type=float, default=0.02, help="fraction of rows after the approximate index")
    args = parser.parse_args(argv)
    kinds = [k for k in args.index.split(",") if k and k != "exact"]
    result = run(True, rows=args.rows, kinds=kinds, fraction=args.hidden, queries=args.queries,
                 latency_queries=args.latency_queries, tail=args.tail)
    path = write_results("filter", {"machine": machine(), **result["data"]}, result["markdown"])
    print(result["markdown"])
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
