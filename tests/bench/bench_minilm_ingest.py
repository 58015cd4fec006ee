"""MiniLM end-to-end ingest vs the model alone, on the same texts, in one run (issue 5).

    .venv/bin/python -m tests.bench.bench_minilm_ingest [--chunks 512] [--words 200] [--repeats 3]

"Model alone" is MiniLMEmbedder.encode over the texts in batches of embedder.batch_size in
this process. "End to end" is the real system (supervisor, one embedder, indexer with
durable commits) timed from the end of `roxi ingest` until every chunk is indexed, with
the model already loaded. Each document is one chunk, so both embed identical texts. The
goal is end to end >= 0.9 x the model alone.
"""

from __future__ import annotations

import argparse
import time

from roxi_mp.config import load as load_config
from roxi_mp.embedders.minilm import MiniLMEmbedder
from roxi_mp.ingest import ingest_paths, sample_corpus_dir
from roxi_mp.store import Store

from .common import bench_system, machine, median, stop_on_sigterm, table, write_results


def texts_from_sample(n: int, words: int) -> list[str]:
    pool = " ".join(p.read_text() for p in sorted(sample_corpus_dir().glob("*.md"))).split()
    out, start = [], 0
    while len(out) < n:
        out.append(" ".join(pool[(start + i) % len(pool)] for i in range(words)))
        start += 37  # windows overlap but every text differs
    return out


def model_alone(texts: list[str], batch: int) -> float:
    model = MiniLMEmbedder()
    model.encode(texts[:batch])  # load and warm up
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        model.encode(texts[i:i + batch])
    return len(texts) / (time.perf_counter() - started)


def end_to_end(texts: list[str], words: int) -> float:
    with bench_system("minilm-ingest", embedder__backend="minilm", store__chunk_words=words + 50,
                      store__chunk_overlap=0, embedder__idle_seconds=600.0) as s:
        s.start()
        docs = s.cfg.data_dir.parent / "docs"
        docs.mkdir()
        for i, text in enumerate(texts):
            (docs / f"t{i:05d}.txt").write_text(text)
        cfg = s.cfg
        with Store(cfg.db_path) as store:
            report = ingest_paths(store, [docs], chunk_words=cfg.store.chunk_words, chunk_overlap=0,
                                  max_document_bytes=cfg.store.max_document_bytes)
        assert report.chunks == len(texts), report.as_dict()
        started = time.perf_counter()
        with s.control() as control:
            control.command("notify")
        s.wait_indexed(len(texts), timeout=3600)
        return len(texts) / (time.perf_counter() - started)


def measure_all(chunks: int, words: int, repeats: int) -> dict:
    batch = load_config(use_default_file=True).embedder.batch_size
    texts = texts_from_sample(chunks, words)
    alone, e2e = [], []
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits both alike
        alone.append(model_alone(texts, batch))
        e2e.append(end_to_end(texts, words))
    return {"chunks": chunks, "words": words, "batch": batch, "model_alone": alone, "end_to_end": e2e,
            "ratio": median(e2e) / median(alone)}


def markdown(data: dict) -> str:
    alone, e2e = data["model_alone"], data["end_to_end"]
    return "\n".join([f"## MiniLM ingest ({data['chunks']} chunks of {data['words']} words, batch {data['batch']})", "",
                      table(["path", "chunks/s (median)", "runs"],
                            [["model alone (encode)", f"{median(alone):.1f}", ", ".join(f"{x:.1f}" for x in alone)],
                             ["end to end (ingest -> indexed)", f"{median(e2e):.1f}",
                              ", ".join(f"{x:.1f}" for x in e2e)]]),
                      "", f"end to end / model alone = {data['ratio']:.2f} (goal >= 0.9)"]) + "\n"


def run(quick: bool) -> dict:
    data = measure_all(64, 200, 1) if quick else measure_all(512, 200, 3)
    return {"name": "minilm-ingest", "markdown": markdown(data), "data": data}


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=512)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    data = measure_all(args.chunks, args.words, args.repeats)
    md = markdown(data)
    path = write_results("minilm-ingest", {"machine": machine(), **data}, md)
    print(md)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
