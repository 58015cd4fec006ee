"""The MiniLM model alone: chunks/s and RSS of MiniLMEmbedder.encode, no roles, no store.

    .venv/bin/python -m tests.bench.bench_minilm_model [--chunks 512] [--words 200]
        [--threads 1,2] [--batch-tokens 8192] [--runs 3]

Chunk texts are windows of `--words` words over the bundled sample corpus
(roxi_mp/data/sample_corpus/*.md), repeated with shifted starts when the corpus runs out.
Each (threads, batch_tokens) setting runs in a fresh interpreter, so its peak RSS
(ru_maxrss) is its own: load, one warm-up call on 32 chunks, then `--runs` timed calls of
encode on all chunks; chunks/s is their median. This is the ceiling that an end-to-end
ingest figure (chunking, store, indexer) is compared against. Several comma-separated
`--batch-tokens` values make a sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "roxi_mp" / "data" / "sample_corpus"
MB = 2**20
#: chunks in the warm-up call, which pays first-run costs outside the timed runs (32)
WARMUP_CHUNKS = 32


def chunk_texts(count: int, words_per_chunk: int) -> list[str]:
    words = " ".join(p.read_text(encoding="utf-8") for p in sorted(CORPUS.glob("*.md"))).split()
    if len(words) < words_per_chunk:
        words = words * (words_per_chunk // len(words) + 1)
    windows = max(1, len(words) // words_per_chunk)
    texts = []
    for i in range(count):
        # Each pass over the corpus starts a third of a window later: repeats are not
        # identical texts, as real chunks would not be.
        shift = (i // windows) * (words_per_chunk // 3) % words_per_chunk
        start = min((i % windows) * words_per_chunk + shift, len(words) - words_per_chunk)
        texts.append(" ".join(words[start : start + words_per_chunk]))
    return texts


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def worker(args: argparse.Namespace) -> dict:
    """One setting, measured in this (fresh) process."""
    import psutil

    from roxi_mp.embedders.minilm import MiniLMEmbedder
    from roxi_mp.memory import release

    proc = psutil.Process()

    def rss() -> int:
        release()
        return proc.memory_info().rss

    texts = chunk_texts(args.chunks, args.words)
    model = MiniLMEmbedder(threads=args.threads, batch_tokens=args.batch_tokens)
    before = rss()
    started = time.perf_counter()
    model.load()
    load_s = time.perf_counter() - started
    loaded, load_peak = rss(), _peak()
    lengths = [len(model._token_ids(t)) for t in texts]
    model.encode(texts[:WARMUP_CHUNKS])
    rates = []
    for _ in range(args.runs):
        started = time.perf_counter()
        vectors = model.encode(texts)
        rates.append(len(texts) / (time.perf_counter() - started))
    assert vectors.shape == (len(texts), model.dim)
    peak = _peak()
    model.unload()
    unloaded = rss()
    return {
        "bench": "minilm_model", "model_id": model.model_id, "chunks": len(texts),
        "words": args.words, "threads": args.threads, "batch_tokens": args.batch_tokens,
        "max_tokens": model.max_tokens, "mean_tokens": round(statistics.mean(lengths), 1),
        "truncated_fraction": round(sum(n >= model.max_tokens for n in lengths) / len(lengths), 3),
        "chunks_per_s": round(statistics.median(rates), 2), "runs_chunks_per_s": [round(r, 2) for r in rates],
        "load_s": round(load_s, 3), "rss_before_load_mb": round(before / MB, 1),
        "rss_loaded_mb": round(loaded / MB, 1), "peak_rss_load_mb": round(load_peak / MB, 1),
        "peak_rss_mb": round(peak / MB, 1), "rss_unloaded_mb": round(unloaded / MB, 1),
        "cpus": os.cpu_count(),
    }


def run_setting(args: argparse.Namespace, threads: int, batch_tokens: int) -> dict:
    cmd = [sys.executable, "-m", "tests.bench.bench_minilm_model", "--worker",
           "--chunks", str(args.chunks), "--words", str(args.words), "--runs", str(args.runs),
           "--threads", str(threads), "--batch-tokens", str(batch_tokens)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed (threads {threads}, batch_tokens {batch_tokens}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=512)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    parser.add_argument("--batch-tokens", default="8192", help="comma-separated budgets (a sweep)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.threads, args.batch_tokens = int(args.threads), int(args.batch_tokens)
        print(json.dumps(worker(args)))
        return 0

    from .common import machine, table, write_results

    results = []
    for batch_tokens in [int(x) for x in args.batch_tokens.split(",") if x]:
        for threads in [int(x) for x in args.threads.split(",") if x]:
            result = run_setting(args, threads, batch_tokens)
            print(json.dumps(result), flush=True)  # the figure, one JSON line per setting
            results.append(result)
    rows = [[r["threads"], r["batch_tokens"], f"{r['chunks_per_s']:.1f}",
             " / ".join(f"{x:.1f}" for x in r["runs_chunks_per_s"]), r["mean_tokens"],
             f"{r['rss_before_load_mb']:.0f}", f"{r['rss_loaded_mb']:.0f}", f"{r['peak_rss_load_mb']:.0f}",
             f"{r['peak_rss_mb']:.0f}", f"{r['rss_unloaded_mb']:.0f}"] for r in results]
    markdown = "\n".join([
        f"## MiniLM model alone ({results[0]['model_id']}, {args.chunks} chunks of {args.words} words, "
        f"max_tokens {results[0]['max_tokens']}, {results[0]['truncated_fraction'] * 100:.0f} % truncated)",
        "",
        table(["threads", "batch_tokens", "chunks/s (median)", "runs", "mean tokens", "RSS before load MB",
               "RSS loaded MB", "peak RSS at load MB", "peak RSS MB", "RSS after unload MB"], rows),
        "",
    ])
    path = write_results("minilm_model", {"machine": machine(), "results": results}, markdown)
    print(markdown)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
