"""Whole-machine embedding (issue 21, acceptance 1): ingest before and after, and queries during it.

    .venv/bin/python -m tests.bench.bench_embed_concurrency [--chunks 384] [--repeats 2]
        [--phase-seconds 20] [--pairs 3] [--settings old,cores,int8,new]

1. Throughput: the same texts (bench_minilm_ingest's 200-word windows of the sample
   corpus, one chunk each), end to end through the real system with MiniLM (from the end of
   `roxi ingest` until every chunk is indexed, model loaded), with each named setting:
   `old` is the system as before issue 21 (one batch at a time on one core, float32),
   `new` the shipped defaults (a batch per core while nobody queries, int8), and one
   change at a time between them (SETTINGS). The settings take turns, `--repeats` times
   (in reverse order every other time), so drift on a shared machine hits all alike.
2. Queries during ingest: one system with the shipped defaults and a store of pending
   chunks; a client sends a text query every 100 ms (a new text each, no result cache) while
   phases alternate: `ingest` (processing resumed, the embedder working) and `idle`
   (processing paused, after the batches in flight landed). p50 / p99 of each kind over all
   its phases, and their spread per phase; the goal is ingest p99 <= 1.2 x idle p99.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

import numpy as np

from roxi_mp import service
from roxi_mp.ingest import ingest_paths, sample_corpus_dir
from roxi_mp.store import Store

from .bench_minilm_ingest import texts_from_sample
from .common import bench_system, machine, median, stop_on_sigterm, table, write_results

#: settings compared for throughput: name -> overrides. `old`: as before issue 21 (one
#: batch at a time, float32); `cores`: every core, float32; `int8`: one at a time, int8;
#: `new`: the shipped defaults (every core while nobody queries, int8)
SETTINGS: dict[str, dict[str, Any]] = {
    "old": {"embedder__idle_workers": 1, "minilm__compute": "float32"},
    "cores": {"minilm__compute": "float32"},
    "int8": {"embedder__idle_workers": 1, "minilm__compute": "int8"},
    "new": {},
}
#: the shipped embedder defaults, not the tests' (tests/conftest.py TEST_DEFAULTS shrink them)
SHIPPED = {"embedder__batch_size": 64, "embedder__poll_seconds": 0.5, "embedder__busy_cpu_percent": 90.0}
#: seconds between queries of the client in part 2 (a query every 100 ms, as the issue says)
QUERY_INTERVAL = 0.1
#: seconds after pausing or resuming before a phase's queries count (batches in flight land)
SETTLE_SECONDS = 3.0


def store_texts(s, texts: list[str], words: int) -> None:
    """Each text as a document of one chunk, stored and announced (embedding starts)."""
    docs = s.cfg.data_dir.parent / "docs"
    docs.mkdir(exist_ok=True)
    for i, text in enumerate(texts):
        (docs / f"t{i:05d}.txt").write_text(text)
    with Store(s.cfg.db_path) as store:
        report = ingest_paths(store, [docs], chunk_words=words + 50, chunk_overlap=0,
                              max_document_bytes=s.cfg.store.max_document_bytes)
    assert report.chunks == len(texts), report.as_dict()


def throughput(texts: list[str], words: int, overrides: dict[str, Any]) -> float:
    """Chunks/s from the end of ingest until all are indexed, the model already loaded."""
    with bench_system("embed-conc", embedder__backend="minilm", store__chunk_words=words + 50,
                      store__chunk_overlap=0, embedder__idle_seconds=600.0, **SHIPPED, **overrides) as s:
        s.start()
        store_texts(s, texts, words)
        started = time.perf_counter()
        with s.control() as control:
            control.command("notify")
        s.wait_indexed(len(texts), timeout=3600)
        return len(texts) / (time.perf_counter() - started)


def query_texts(n: int, seed: int = 5) -> list[str]:
    """`n` different 6-12 word texts cut from the sample corpus."""
    words = " ".join(p.read_text() for p in sorted(sample_corpus_dir().glob("*.md"))).split()
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        start = rng.randrange(len(words) - 12)
        out.add(" ".join(words[start:start + rng.randint(6, 12)]))
    return sorted(out)


def paced_queries(client, texts: list[str], seconds: float) -> list[float]:
    """Latencies (ms) of text queries sent every QUERY_INTERVAL for `seconds` (the next one
    leaves at its own time, or at once when the last answer came later)."""
    out = []
    start = time.perf_counter()
    for i, text in enumerate(texts):
        due = start + i * QUERY_INTERVAL
        if due - start >= seconds:
            break
        time.sleep(max(0.0, due - time.perf_counter()))
        sent = time.perf_counter()
        client.query(text, k=10, with_text=False)
        out.append((time.perf_counter() - sent) * 1000)
    return out


def queries_during_ingest(texts: list[str], words: int, phase_seconds: float, pairs: int) -> dict:
    per_phase = int(phase_seconds / QUERY_INTERVAL) + 1
    asks = iter(query_texts(per_phase * 2 * pairs + 50))
    phases: list[dict] = []
    with bench_system("embed-conc-q", embedder__backend="minilm", store__chunk_words=words + 50,
                      store__chunk_overlap=0, embedder__idle_seconds=600.0, query__cache_entries=0,
                      **SHIPPED) as s:
        s.start()
        service.set_paused(s.cfg, True)
        store_texts(s, texts, words)
        with s.query_client(timeout=30.0) as client:
            paced_queries(client, [next(asks) for _ in range(20)], 2.0)  # warm up: model loaded
            for pair in range(pairs):
                for kind in (("idle", "ingest") if pair % 2 == 0 else ("ingest", "idle")):
                    service.set_paused(s.cfg, kind == "idle")
                    time.sleep(SETTLE_SECONDS)
                    indexed = s.stats().indexed
                    ms = paced_queries(client, [next(asks) for _ in range(per_phase)], phase_seconds)
                    phases.append({"kind": kind, "ms": ms, "embedded": s.stats().indexed - indexed})
        embedder = next(r for r in s.status()["roles"] if r["role"] == "embedder")
    return {"phases": phases, "embedder": {k: embedder.get(k) for k in ("embedded", "yields", "concurrency")}}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(during: dict) -> dict:
    out = {}
    for kind in ("idle", "ingest"):
        phases = [p for p in during["phases"] if p["kind"] == kind]
        ms = [x for p in phases for x in p["ms"]]
        out[kind] = {"p50": percentile(ms, 50), "p99": percentile(ms, 99), "queries": len(ms),
                     "phase_p99": [percentile(p["ms"], 99) for p in phases],
                     "embedded": sum(p["embedded"] for p in phases)}
    out["ratio_p99"] = out["ingest"]["p99"] / out["idle"]["p99"]
    return out


def measure(chunks: int, words: int, repeats: int, phase_seconds: float, pairs: int, settings: list[str]) -> dict:
    texts = texts_from_sample(chunks, words)
    rates: dict[str, list[float]] = {name: [] for name in settings}
    for r in range(repeats):
        for name in (settings if r % 2 == 0 else settings[::-1]):
            rates[name].append(throughput(texts, words, SETTINGS[name]))
    base = median(rates[settings[0]])
    speedup = {name: median(rs) / base for name, rs in rates.items()}
    during = queries_during_ingest(texts_from_sample(chunks * 4, words), words, phase_seconds, pairs)
    return {"chunks": chunks, "words": words, "rates": rates, "speedup": speedup, "during": during,
            "summary": summarize(during), "phase_seconds": phase_seconds}


def markdown(data: dict) -> str:
    rows = [[name, f"{median(rs):.1f}", ", ".join(f"{x:.1f}" for x in rs), f"{data['speedup'][name]:.2f}x"]
            for name, rs in data["rates"].items()]
    sm = data["summary"]
    qrows = [[kind, f"{sm[kind]['p50']:.2f}", f"{sm[kind]['p99']:.2f}",
              ", ".join(f"{x:.2f}" for x in sm[kind]["phase_p99"]), str(sm[kind]["queries"]),
              str(sm[kind]["embedded"])] for kind in ("idle", "ingest")]
    return "\n".join([
        f"## Whole-machine embedding ({data['chunks']} chunks of {data['words']} words, MiniLM, end to end)", "",
        table(["setting", "chunks/s (median)", "runs", "vs first"], rows), "",
        f"Text queries every {QUERY_INTERVAL * 1000:.0f} ms, phases of {data['phase_seconds']:.0f} s taking turns:", "",
        table(["embedder", "p50 ms", "p99 ms", "p99 per phase", "queries", "chunks embedded meanwhile"], qrows), "",
        f"ingest p99 / idle p99 = {sm['ratio_p99']:.2f} (goal <= 1.2); "
        f"embedder after the run: {data['during']['embedder']}"]) + "\n"


def run(quick: bool) -> dict:
    data = measure(96, 200, 1, 10.0, 1, list(SETTINGS)) if quick else measure(384, 200, 2, 20.0, 3, list(SETTINGS))
    return {"name": "embed-concurrency", "markdown": markdown(data), "data": data}


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=384)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--phase-seconds", type=float, default=20.0)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args(argv)
    settings = args.settings.split(",")
    for name in settings:
        if name not in SETTINGS:
            parser.error(f"unknown setting {name!r}; known: {', '.join(SETTINGS)}")
    data = measure(args.chunks, args.words, args.repeats, args.phase_seconds, args.pairs, settings)
    md = markdown(data)
    path = write_results("embed-concurrency", {"machine": machine(), **data}, md)
    print(md)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
