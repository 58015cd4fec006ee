"""SciFact (BEIR) retrieval quality and latency through the real system (issue 19, acceptance 1).

    ./run.sh bench --beir [DIR] [--store ROOT] [--quick]
    .venv/bin/python -m tests.bench.bench_beir [--beir DIR] [--store ROOT] [--quick]

DIR is a BEIR dataset directory (default ../shared/beir/scifact next to the checkout; read
there, never copied: see ../shared/beir/README.md). A real system (supervisor and roles,
the MiniLM backend) stores every corpus document over the documents endpoint (key = the
BEIR `_id`, content = title, a blank line, abstract) and embeds it; the bench waits until
every chunk is indexed (progress every 30 s). Then, through the query socket
(QueryClient, ZeroMQ) and for each mode (dense, lexical, hybrid), the test queries (those
with qrels rows) run as text queries with k = 300 chunks, enough for 100 documents; a
document scores by its best chunk; nDCG@10 and recall@100 as in tests/bench/beir_eval.py.
Latency p50/p99 is per single query with k = 10 and text (as an application asks), timed
at the client, the three modes taking turns query by query. Hybrid runs with the server's
configured fusion; both fusion methods with a few leg weights (request fields) and, unless
--quick, a few RRF constants (`query.rrf_k`, a restart of the system on the same store)
follow in a second table, so the default can be chosen on this benchmark. Each variant
also runs with k = 100: its legs then bring `query.candidates` (100) candidates each, as
an application's query does, where k = 300 brings 300 (which moves RRF ranks and the
min-max normalisation of the weighted fusion).

Ingesting takes ~12 minutes with MiniLM on 2 cores (about 8.3k chunks at ~12/s). With
--store ROOT the system's root directory is kept and reused: if its store already holds
every corpus document fully indexed, the puts are skipped (a put of an unchanged document
is a no-op anyway). Without it a temporary directory is used and removed afterwards.
A server without the `mode` request field (before issue 19) answers dense only: the
other modes are then reported as not measured.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from roxi_mp.client import DocumentsClient, QueryClient
from roxi_mp.errors import ServerError
from roxi_mp.store import Store

from . import beir_eval
from .common import machine, make_system, stop_on_sigterm, table, temp_root, write_results

#: the dataset read by default: shared/beir/scifact beside the checkout (the repository root's parent)
DEFAULT_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "beir" / "scifact"
MODES = ("dense", "lexical", "hybrid")
#: chunks asked per quality query (about 1.6 chunks per document: enough for 100 documents)
QUALITY_K = 300
#: chunks asked per latency query, as an application asks by default
LATENCY_K = 10
#: onnxruntime threads of the model while latency is timed: the product's default (minilm.threads)
LATENCY_THREADS = 1
#: chunks asked by the second quality run of each fusion variant: its legs then bring the
#: configured `query.candidates` (100) each, as for an application's query of k <= 100,
#: where k = QUALITY_K brings 300 (min-max normalisation and RRF ranks see other lists)
CANDIDATES_K = 100
#: seconds the corpus may take to be indexed, however loaded the machine (3 h)
PATIENCE = 3 * 3600.0
#: seconds between progress lines while storing and indexing
PROGRESS_SECONDS = 30.0
#: every system here, over bench_system's defaults: MiniLM (using both cores while it
#: ingests and nobody queries, as shipped), no result cache (every query is searched),
#: roles never asleep
CONFIG: dict[str, Any] = {"embedder__backend": "minilm", "embedder__lease_seconds": 60.0,
                          "embedder__idle_seconds": 3600.0, "query__idle_seconds": 3600.0,
                          "query__cache_entries": 0}
#: published nDCG@10 on the SciFact test split, as ../shared/beir/README.md lists them: (value, system, source)
PUBLISHED: dict[str, list[tuple[float, str, str]]] = {
    "dense": [(0.645, "all-MiniLM-L6-v2", "MTEB paper results (mtebpaper, SciFact.json)"),
              (0.624, "Qdrant dense", "qdrant.tech hybrid search tuning article")],
    "lexical": [(0.665, "BM25 (BEIR)", "Thakur et al. 2021, arXiv:2104.08663, Table 2, Anserini multifield"),
                (0.679, "BM25 flat", "castorini/anserini regressions, beir-v1.0.0-scifact.flat"),
                (0.686, "FTS5 bm25", "castorini/quackir"),
                (0.689, "Qdrant BM25", "qdrant.tech hybrid search tuning article")],
    "hybrid": [(0.718, "Qdrant RRF", "qdrant.tech hybrid search tuning article"),
               (0.744, "BM25 + BGE-base RRF", "castorini/quackir")],
}
#: issue 19, acceptance 1
DENSE_TARGET, DENSE_TOLERANCE = 0.645, 0.01
LEXICAL_MIN, HYBRID_MIN = 0.67, 0.71
#: hybrid variants sent as request fields: (fusion, dense weight, lexical weight)
FUSIONS = [("rrf", 1.0, 1.0), ("weighted", 1.0, 1.0),  # the first two are all of --quick
           ("rrf", 1.0, 0.5), ("rrf", 0.7, 1.0), ("rrf", 0.5, 1.0),
           ("weighted", 1.0, 0.5), ("weighted", 1.0, 0.7), ("weighted", 0.7, 1.0), ("weighted", 0.5, 1.0)]
#: RRF constants tried besides the configured one (each a restart of the system on the same store)
RRF_CONSTANTS = (10, 30, 100)


class Dataset:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.docs = list(beir_eval.read_corpus(self.dir))
        self.qrels = beir_eval.read_qrels(self.dir)
        self.queries = beir_eval.queries_with_qrels(beir_eval.read_queries(self.dir), self.qrels)


def present(directory: Path) -> bool:
    return all((Path(directory) / name).is_file() for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"))


def say(line: str) -> None:
    print(f"  [beir] {line}", flush=True)


@contextlib.contextmanager
def running(root: Path, **overrides: Any) -> Iterator[Any]:
    """A started system on `root` (its data in root/data), stopped whatever happens."""
    s = make_system(root, **{**CONFIG, **overrides})
    try:
        s.start(timeout=180)
        yield s
    finally:
        s.stop()
        s.kill_everything()


def indexed_keys(cfg) -> tuple[set[str], Any]:
    """Keys whose live version is fully indexed, and the store's counts."""
    keys: set[str] = set()
    with Store(cfg.db_path) as store:
        after = ""
        while page := store.documents(state="live", after=after, limit=1000):
            keys.update(d["key"] for d in page if d["indexed"] == d["chunks"])
            after = page[-1]["key"]
        return keys, store.stats()


def complete(cfg, docs: list[beir_eval.Document]) -> bool:
    keys, stats = indexed_keys(cfg)
    return stats.pending + stats.leased + stats.replacing == 0 and all(d.id in keys for d in docs)


def put_all(s, docs: list[beir_eval.Document]) -> dict:
    """Every document over the documents endpoint; the outcomes counted."""
    outcomes: collections.Counter = collections.Counter()
    started = last = time.perf_counter()
    with DocumentsClient.for_config(s.cfg, timeout=120) as client:
        for i, doc in enumerate(docs, start=1):
            outcomes[client.put(doc.id, doc.content, title=doc.title or doc.id)["outcome"]] += 1
            if time.perf_counter() - last >= PROGRESS_SECONDS:
                last = time.perf_counter()
                say(f"stored {i:,} / {len(docs):,} documents")
    seconds = time.perf_counter() - started
    say(f"stored {len(docs):,} documents in {seconds:.0f} s: {dict(outcomes)}")
    return {"seconds": seconds, "outcomes": dict(outcomes)}


def wait_indexed(s) -> dict:
    """Poll the store until no chunk is pending, leased or waiting for a copy."""
    started = time.perf_counter()
    last = started - PROGRESS_SECONDS
    while True:
        with Store(s.cfg.db_path) as store:
            stats = store.stats()
        now = time.perf_counter()
        done = stats.pending + stats.leased + stats.replacing == 0
        if done or now - last >= PROGRESS_SECONDS:
            last = now
            say(f"indexed {stats.indexed:,} / {stats.chunks:,} chunks, {stats.failed} failed "
                f"({now - started:.0f} s)")
        if done:
            return {"seconds": now - started, "chunks": stats.chunks, "indexed": stats.indexed,
                    "failed": stats.failed, "documents": stats.documents}
        if s.proc.poll() is not None or now - started > PATIENCE:
            raise RuntimeError(f"gave up waiting for the corpus to be indexed\n{s.logs()}")
        time.sleep(1.0)


def knows_modes(client: QueryClient) -> bool:
    """Whether the server takes `mode` (its reply says which mode it used)."""
    return "mode" in client.call("query", text="warm up", k=1, with_text=False, mode="dense")


def quality(client: QueryClient, data: Dataset, *, k: int = QUALITY_K, **fields: Any) -> dict:
    """nDCG@10 and recall@100 of the test queries asking k chunks each, with `fields`."""
    runs: dict[str, list[str]] = {}
    reply: dict = {}
    started = time.perf_counter()
    for qid, text in data.queries.items():
        reply = client.call("query", text=text, k=k, with_text=False, **fields)
        runs[qid] = beir_eval.ranked_documents(reply["hits"])
    seconds = time.perf_counter() - started
    result = {**beir_eval.evaluate(runs, data.qrels), "seconds": seconds, "fields": fields,
              "coverage": reply.get("coverage"), "mode": reply.get("mode")}
    say(f"{fields or 'server default'}, k {k}: nDCG@10 {result['ndcg']:.4f}, recall@100 {result['recall']:.4f} "
        f"({len(runs)} queries in {seconds:.0f} s)")
    return result


def latency(client: QueryClient, data: Dataset, modes: list[str], *, mode_field: bool) -> dict[str, dict]:
    """p50/p99 seconds of single k = LATENCY_K queries per mode, the modes taking turns (so
    the machine's drift hits all alike); nDCG@10 of those replies comes along."""
    times: dict[str, list[float]] = {m: [] for m in modes}
    runs: dict[str, dict[str, list[str]]] = {m: {} for m in modes}
    for m in modes:  # warm every path once
        client.call("query", text="warm up", k=LATENCY_K, **({"mode": m} if mode_field else {}))
    for i, (qid, text) in enumerate(data.queries.items()):
        for m in modes[i % len(modes):] + modes[:i % len(modes)]:
            fields = {"mode": m} if mode_field else {}
            started = time.perf_counter()
            reply = client.call("query", text=text, k=LATENCY_K, with_text=True, **fields)
            times[m].append(time.perf_counter() - started)
            runs[m][qid] = beir_eval.ranked_documents(reply["hits"])
    return {m: {"p50": float(np.percentile(times[m], 50)), "p99": float(np.percentile(times[m], 99)),
                "ndcg_k10": beir_eval.evaluate(runs[m], data.qrels)["ndcg"]} for m in modes}


def fusion_sweep(client: QueryClient, data: Dataset, rrf_k: Any, variants: list[tuple[str, float, float]]) -> list:
    """Hybrid quality per (fusion, weights) variant; a variant the server refuses is noted, not fatal."""
    out = []
    for fusion, dense, lexical in variants:
        row = {"fusion": fusion, "rrf_k": rrf_k if fusion == "rrf" else None, "dense": dense, "lexical": lexical}
        fields = {"mode": "hybrid", "fusion": fusion, "weights": {"dense": dense, "lexical": lexical}}
        try:
            result, fewer = quality(client, data, **fields), quality(client, data, k=CANDIDATES_K, **fields)
        except ServerError as exc:
            say(f"{fusion} {dense:g} / {lexical:g} refused: {exc}")
            out.append({**row, "ndcg": None, "recall": None, "ndcg_k100": None, "error": str(exc)})
            continue
        out.append({**row, "ndcg": result["ndcg"], "recall": result["recall"], "ndcg_k100": fewer["ndcg"]})
    return out


def measure_system(s, data: Dataset, *, quick: bool) -> dict:
    """Ingest if needed, then quality per mode, latency, and the per-request fusion sweep."""
    out: dict[str, Any] = {"reused": complete(s.cfg, data.docs)}
    if out["reused"]:
        say("the store already holds every document, fully indexed: no puts")
    else:
        out["put"] = put_all(s, data.docs)
    out["index"] = wait_indexed(s)
    with QueryClient.for_config(s.cfg, timeout=120) as client:
        out["mode_field"] = knows_modes(client)
        modes = list(MODES) if out["mode_field"] else ["dense"]
        out["quality"] = {m: quality(client, data, **({"mode": m} if out["mode_field"] else {})) for m in modes}
        variants = FUSIONS[:2] if quick else FUSIONS
        out["sweep"] = fusion_sweep(client, data, getattr(s.cfg.query, "rrf_k", None), variants) \
            if out["mode_field"] else []
    q = s.cfg.query
    out["defaults"] = {name: getattr(q, name, None) for name in
                       ("mode", "fusion", "rrf_k", "dense_weight", "lexical_weight", "candidates")}
    return out


def rrf_constants(root: Path, data: Dataset, configured: int) -> list:
    """RRF (weights 1:1) with other constants: a restart of the system per constant."""
    out = []
    for constant in (c for c in RRF_CONSTANTS if c != configured):
        with running(root, query__rrf_k=constant) as s, QueryClient.for_config(s.cfg, timeout=120) as client:
            out += fusion_sweep(client, data, constant, [("rrf", 1.0, 1.0)])
    return out


def measure(directory: Path, store: Path | None, *, quick: bool) -> dict:
    data = Dataset(directory)
    say(f"{len(data.docs):,} documents, {len(data.queries)} test queries, "
        f"{sum(len(g) for g in data.qrels.values())} qrels pairs from {directory}")
    root = Path(store) if store else temp_root("beir")
    root.mkdir(parents=True, exist_ok=True)
    try:
        with running(root) as s:
            out = measure_system(s, data, quick=quick)
            out["model"] = Store.recorded_model(s.cfg.db_path)
        # Latency on a system just started, the model on its default one thread (a store
        # reused from an older run may have been built with two).
        with running(root, minilm__threads=LATENCY_THREADS) as s, \
                QueryClient.for_config(s.cfg, timeout=120) as client:
            modes = list(MODES) if out["mode_field"] else ["dense"]
            out["latency"] = latency(client, data, modes, mode_field=out["mode_field"])
        if out["mode_field"] and not quick and out["defaults"]["rrf_k"] is not None:
            try:
                out["sweep"] += rrf_constants(root, data, out["defaults"]["rrf_k"])
            except Exception as exc:  # the main figures stand without the extra constants
                say(f"RRF constants not measured: {exc}")
                out["rrf_constants_error"] = str(exc)
    finally:
        if not store:
            shutil.rmtree(root, ignore_errors=True)
    out.update(dataset=str(directory), store=str(store) if store else None, documents=len(data.docs),
               queries=len(data.queries))
    return out


def verdicts(out: dict) -> list[str]:
    """The pass/fail lines of issue 19's acceptance 1."""
    q = out["quality"]

    def line(mode: str, goal: str, ok: Any) -> str:
        if mode not in q:
            return f"- {mode}: {goal}: NOT MEASURED (the server takes no `mode`)"
        return f"- {mode}: nDCG@10 {q[mode]['ndcg']:.3f}, {goal}: {'PASS' if ok(q[mode]['ndcg']) else 'FAIL'}"

    return [line("dense", f"within {DENSE_TOLERANCE} of {DENSE_TARGET}",
                 lambda v: abs(v - DENSE_TARGET) <= DENSE_TOLERANCE + 1e-12),
            line("lexical", f">= {LEXICAL_MIN}", lambda v: v >= LEXICAL_MIN),
            line("hybrid", f">= {HYBRID_MIN}", lambda v: v >= HYBRID_MIN)]


def markdown(out: dict) -> str:
    rows = []
    for mode in MODES:
        published = ", ".join(f"{value:.3f} {system}" for value, system, _ in PUBLISHED[mode])
        if mode in out["quality"]:
            q, t = out["quality"][mode], out["latency"][mode]
            rows.append([mode, f"{q['ndcg']:.4f}", f"{q['recall']:.4f}", f"{t['p50'] * 1e3:.1f}",
                         f"{t['p99'] * 1e3:.1f}", published])
        else:
            rows.append([mode, "-", "-", "-", "-", published])
    d, index = out["defaults"], out["index"]
    hybrid = (f"Hybrid as configured: fusion {d['fusion']}, rrf_k {d['rrf_k']:g}, weights {d['dense_weight']:g} / "
              f"{d['lexical_weight']:g}, max(k, query.candidates = {d['candidates']}) candidates per leg "
              f"({QUALITY_K} here)." if d["fusion"] else "")
    lines = [f"## SciFact (BEIR test split) through the real system, MiniLM: {out['queries']} queries, "
             f"{out['documents']:,} documents", "",
             table(["mode", "nDCG@10", "recall@100", "p50 ms", "p99 ms", "published nDCG@10"], rows), "",
             f"Quality: text queries with k = {QUALITY_K} chunks (enough for 100 documents), a document scored "
             f"by its best chunk, binary relevance. Latency: k = {LATENCY_K} with text, timed at the client "
             f"through ZeroMQ, modes in turn, the model ({out.get('model')}) on {LATENCY_THREADS} thread. nDCG@10 of those k = {LATENCY_K} replies: "
             + ", ".join(f"{m} {t['ndcg_k10']:.4f}" for m, t in out["latency"].items()) + ". " + hybrid, "",
             f"Store: {index['chunks']:,} chunks, {index['indexed']:,} indexed, {index['failed']} failed; "
             + ("reused, no puts." if out["reused"] else
                f"stored in {out['put']['seconds']:.0f} s, indexed {index['seconds']:.0f} s after the last put."),
             "", "Published figures: " + "; ".join(f"{system} {value:.3f}: {source}" for rows in PUBLISHED.values()
                                                  for value, system, source in rows) + ".",
             "", "Issue 19, acceptance 1:", *verdicts(out)]
    if out["sweep"]:
        sweep = [[r["fusion"], f"{r['rrf_k']:g}" if r["rrf_k"] is not None else "-",
                  f"{r['dense']:g} / {r['lexical']:g}",
                  *((f"{r['ndcg']:.4f}", f"{r['recall']:.4f}", f"{r['ndcg_k100']:.4f}") if r["ndcg"] is not None
                    else ("refused", "-", "-"))] for r in out["sweep"]]
        lines += ["", "### Hybrid fusion variants (request fields; other RRF constants: a restart on the same store)",
                  "", table(["fusion", "rrf_k", "weights dense / lexical", f"nDCG@10 (k {QUALITY_K})",
                             f"recall@100 (k {QUALITY_K})", f"nDCG@10 (k {CANDIDATES_K})"], sweep), "",
                  f"k {QUALITY_K} brings {QUALITY_K} candidates per leg; k {CANDIDATES_K} brings the configured "
                  f"`query.candidates` ({out['defaults']['candidates']}), as any application query of "
                  f"k <= {CANDIDATES_K} gets."]
    return "\n".join(lines) + "\n"


def run(quick: bool, *, beir_dir: Path | str | None = None, store: Path | str | None = None) -> dict:
    directory = Path(beir_dir) if beir_dir else DEFAULT_DIR
    if not present(directory):
        raise FileNotFoundError(f"SciFact not found at {directory}")
    out = measure(directory, Path(store) if store else None, quick=quick)
    return {"name": "beir", "markdown": markdown(out), "data": out}


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beir", type=Path, default=DEFAULT_DIR, help="BEIR dataset directory")
    parser.add_argument("--store", type=Path, help="system root to keep and reuse (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="fewer fusion variants, no RRF constant restarts")
    args = parser.parse_args(argv)
    if not present(args.beir):
        print(f"SciFact not found at {args.beir}: skipped")
        return 0
    result = run(args.quick, beir_dir=args.beir, store=args.store)
    path = write_results("beir", {"machine": machine(), **result["data"]}, result["markdown"])
    print(result["markdown"])
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
