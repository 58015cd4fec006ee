"""Text queries end to end against the model's own time, step by step (issue 21, acceptance 5).

    .venv/bin/python -m tests.bench.bench_text_query [--beir DIR] [--store ROOT] [--queries 300]
        [--model-in-server]

The store is SciFact's corpus (`../shared/beir/scifact`, BEIR layout, evaluation only: read
from there, never copied) put over the documents endpoint and embedded by the system, or
the sample corpus when the set is absent; `--store ROOT` keeps it for the next run. The
texts are the set's test queries (or 6-12 word windows of the sample corpus). The paths below take
turns by blocks of BLOCK texts (their order rotating), so the machine's drift hits all
alike while no path runs on caches another path's copy of the model has just filled:

- tokenizer: the tokenizer alone on the text (in this process);
- model alone: `MiniLMEmbedder.encode([text])` in this process, one thread, the compute
  the store was built with: the yardstick;
- model process: the same through a `ModelProcess` child, as the query server embeds
  (the request and reply over ZeroMQ on top of the model);
- vector query: the text's vector sent as a vector query, k 10 with text: transport,
  parsing, the search and the hits without the model;
- bare text server: tests/bench/bare_server.py --text, a ZeroMQ server that embeds the text
  with the same model in its own process and runs our Searcher's scan, k 10, replying the
  rows as raw bytes: the floor of a text query through ZeroMQ on this machine (no lexical
  leg, no hits, no model process);
- text query, dense and hybrid: `QueryClient.search(text, k=10)`, the reply's `took_ms`
  (time inside the query server) kept beside the client's time, and the query server's
  own breakdown of its last text queries by step (`stats` text_steps_ms, roxi_mp.steps):
  prepare, lexical leg, waiting for the model, scan, hits, reply.

The goal: text query p50 <= model alone p50 + 1 ms. `--model-in-server` runs the query
server with `query.model_process = false` (the model in its own process: no round trip,
but its runtime's memory stays after deep sleep), for comparison.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from roxi_mp.client import DocumentsClient, QueryClient
from roxi_mp.embedders import minilm_compute
from roxi_mp.embedders.minilm import MiniLMEmbedder
from roxi_mp.model_process import ModelProcess
from roxi_mp.steps import STEPS
from roxi_mp.store import Store

from . import bench_beir
from .bench_query import bare_search, bare_server
from .bench_embed_concurrency import query_texts
from .common import machine, stop_on_sigterm, table, temp_root, write_results

#: the goal: text query p50 at most the model's own p50 plus this, milliseconds
MARGIN_MS = 1.0
#: texts each path takes in a row before the next path's turn. Per text, the paths would
#: run two copies of the model (this process's and the model process's) in turn, each
#: evicting the other from the CPU caches: a cost no query server pays (measured: the model
#: process +1.1 ms over the model alone that way, +0.0-0.2 ms in turns of blocks)
BLOCK = 25
#: paths timed, in this order (rotated per block)
PATHS = ("tokenizer", "model alone", "model process", "bare text server", "vector query", "text dense", "text hybrid")


def sample_store(s) -> None:
    """The sample corpus through the documents endpoint, every chunk indexed."""
    from roxi_mp.ingest import sample_corpus_dir
    with DocumentsClient.for_config(s.cfg, timeout=120) as client:
        for path in sorted(sample_corpus_dir().glob("*.md")):
            client.put(path.name, path.read_text(), title=path.stem)
    bench_beir.wait_indexed(s)


def build(s, beir_dir: Path | None) -> str:
    """Fill the store unless it holds its corpus already; the corpus's name."""
    if beir_dir is not None:
        data = bench_beir.Dataset(beir_dir)
        if not bench_beir.complete(s.cfg, data.docs):
            bench_beir.put_all(s, data.docs)
            bench_beir.wait_indexed(s)
        return f"SciFact ({len(data.docs):,} abstracts)"
    with Store(s.cfg.db_path) as store:
        empty = store.stats().chunks == 0
    if empty:
        sample_store(s)
    return "the sample corpus"


def texts_of(beir_dir: Path | None, n: int) -> list[str]:
    if beir_dir is not None:
        return list(bench_beir.Dataset(beir_dir).queries.values())[:n]
    return query_texts(n)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return (time.perf_counter() - started) * 1000, out


def measure_paths(s, texts: list[str]) -> dict:
    compute = minilm_compute(s.cfg)
    model = MiniLMEmbedder(compute=compute)
    model.load()
    child = ModelProcess(s.cfg)
    child.load()
    times: dict[str, list[float]] = {p: [] for p in PATHS}
    took: dict[str, list[float]] = {"text dense": [], "text hybrid": []}
    with Store(s.cfg.db_path) as store:
        rows = store.visibility().rows
    with QueryClient.for_config(s.cfg, timeout=60) as client, bare_server(s.cfg, rows, text=True) as bare:
        def run(path: str, text: str) -> None:
            if path == "tokenizer":
                ms, _ = timed(lambda: model._token_ids(text))
            elif path == "model alone":
                ms, _ = timed(lambda: model.encode([text]))
            elif path == "model process":
                ms, _ = timed(lambda: child.encode([text]))
            elif path == "bare text server":
                ms, _ = timed(lambda: bare_search(bare, text))
            elif path == "vector query":
                vector = model.encode([text])[0]
                ms, _ = timed(lambda: client.query_vector(vector, k=10, with_text=True))
            else:
                mode = path.split()[1]
                ms, reply = timed(lambda: client.search(text, k=10, with_text=True, mode=mode))
                took[path].append(reply["took_ms"])
            times[path].append(ms)

        for text in texts[:20]:  # warm up every path
            for path in PATHS:
                run(path, text)
        for path in times:
            times[path].clear()
        for values in took.values():
            values.clear()
        for b, start in enumerate(range(0, len(texts), BLOCK)):
            for path in PATHS[b % len(PATHS):] + PATHS[:b % len(PATHS)]:
                for text in texts[start:start + BLOCK]:
                    run(path, text)
        steps = client.stats().get("text_steps_ms", {})
    child.unload()
    model.unload()
    p50 = {path: float(np.percentile(v, 50)) for path, v in times.items()}
    return {"compute": compute, "queries": len(texts),
            "p50": p50, "p99": {path: float(np.percentile(v, 99)) for path, v in times.items()},
            "took_p50": {path: float(np.percentile(v, 50)) for path, v in took.items()},
            "steps_p50": {mode: steps.get(mode, {}) for mode in ("dense", "hybrid")},
            "over_model": {path: p50[path] - p50["model alone"] for path in ("text dense", "text hybrid")},
            "over_bare": {path: p50[path] - p50["bare text server"] for path in ("text dense", "text hybrid")}}


def measure(beir_dir: Path | None, store: Path | None, queries: int, *, model_in_server: bool = False) -> dict:
    root = Path(store) if store else temp_root("text-query")
    root.mkdir(parents=True, exist_ok=True)
    try:
        with bench_beir.running(root) as s:
            corpus = build(s, beir_dir)
        with bench_beir.running(root, query__model_process=not model_in_server) as s:
            with Store(s.cfg.db_path) as st:
                chunks = st.stats().chunks
            out = measure_paths(s, texts_of(beir_dir, queries))
    finally:
        if not store:
            shutil.rmtree(root, ignore_errors=True)
    return {**out, "corpus": corpus, "chunks": chunks, "model_in_server": model_in_server}


def markdown(data: dict) -> str:
    p50, p99, took = data["p50"], data["p99"], data["took_p50"]
    rows = [[path, f"{p50[path]:.2f}", f"{p99[path]:.2f}",
             f"{took[path]:.2f}" if path in took else "",
             f"{p50[path] - p50['model alone']:+.2f}" if path != "model alone" else ""] for path in PATHS]
    verdict = ", ".join(f"{path} {over:+.2f} ms ({'ok' if over <= MARGIN_MS else 'over'})"
                        for path, over in data["over_model"].items())
    steps = data.get("steps_p50", {})
    step_rows = [[step] + [f"{steps[m][step]:.2f}" if step in steps.get(m, {}) else "" for m in ("dense", "hybrid")]
                 for step in STEPS]
    step_rows.append(["the rest: client and ZeroMQ (text query p50 - the steps)"]
                     + [f"{p50['text ' + m] - sum(v for s, v in steps.get(m, {}).items() if s in STEPS):.2f}"
                        for m in ("dense", "hybrid")])
    return "\n".join([
        f"## Text queries vs the model ({data['corpus']}, {data['chunks']:,} chunks, "
        f"{data['queries']} texts, MiniLM {data['compute']}, k 10 with text"
        f"{', the model in the query server' if data.get('model_in_server') else ''})", "",
        table(["path", "p50 ms", "p99 ms", "inside the query server p50 ms", "vs model alone p50"], rows), "",
        f"text query p50 - model alone p50 (goal <= +{MARGIN_MS:g} ms): {verdict}", "",
        "text query p50 - the bare text server's p50 (ours over the floor of a text query through "
        "ZeroMQ here): " + ", ".join(f"{path} {over:+.2f} ms" for path, over in data.get("over_bare", {}).items()), "",
        f"Inside the query server, p50 ms by step of its last {steps.get('dense', {}).get('queries', 0)} "
        f"dense and {steps.get('hybrid', {}).get('queries', 0)} hybrid text queries (roxi_mp.steps; model: "
        "the wait for the vector once the lexical leg is done):", "",
        table(["step", "dense", "hybrid"], step_rows)]) + "\n"


def run(quick: bool, *, beir_dir: Path | str | None = None) -> dict:
    directory = Path(beir_dir) if beir_dir else bench_beir.DEFAULT_DIR
    data = measure(directory if bench_beir.present(directory) and not quick else None, None, 100 if quick else 300)
    return {"name": "text-query", "markdown": markdown(data), "data": data}


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beir", type=Path, default=bench_beir.DEFAULT_DIR,
                        help="SciFact in BEIR layout (absent: the sample corpus)")
    parser.add_argument("--store", type=Path, default=None, help="keep the system here for the next run")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--model-in-server", action="store_true",
                        help="query.model_process = false: the query model in the query server")
    args = parser.parse_args(argv)
    directory = args.beir if bench_beir.present(args.beir) else None
    data = measure(directory, args.store, args.queries, model_in_server=args.model_in_server)
    md = markdown(data)
    path = write_results("text-query", {"machine": machine(), **data}, md)
    print(md)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
