"""Compaction at 1M rows with 30 % dead, through the real system (issue 17, acceptance 4).

    .venv/bin/python -m tests.bench.bench_compact [--rows 1000000] [--dead 0.3] [--kills 5]

A store of N dim-384 rows (documents of 100 chunks, a random `--dead` fraction of them
deleted) is built directly: SQLite rows and the commit protocol (append, fsync, one
transaction per batch), each chunk's vector a function of its id. The real supervisor then
runs on it (hashing backend at 384 dims, exact search, one embedder), and:

- a client queries in a loop with live rows' own vectors (the top hit must be that row's
  chunk), before and during a `compact` control op, while another thread puts documents
  (ingest goes on); reported: query p50 / p99 before and during, wrong answers and errors,
  the child's rows/s, the switch transaction's hold of the write lock, the cleanup's time,
  the vectors file and database size before and after;
- then `--kills` times: more documents deleted, a compaction asked for, and kill -9 of the
  indexer, of the compaction child or of the supervisor at a random moment of it; after the
  restart, the audit (tests.compact_audit: rows dense, one per chunk, each holding its own
  vector, one vectors file of header + rows) must pass;
- a last compaction to the end: the file is exactly the live rows.

Wrong answers after a switch mean the query server does not follow the vectors epoch yet
(its part of issue 17); the figure is reported either way.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np

from roxi_mp.commit import commit
from roxi_mp.errors import RoxiError
from roxi_mp.store import Store
from roxi_mp.vectors import HEADER_BYTES, VectorWriter

from ..compact_audit import audit, put, texts_of
from ..conftest import roxi_processes
from .bench_ann import percentile
from .common import MB, bench_system, machine, stop_on_sigterm, table, write_results

DIM = 384
MODEL_ID = f"hashing-v1-{DIM}"
CHUNKS_PER_DOC = 100
#: documents inserted (and their rows committed) per transaction while building
BUILD_DOCS = 200
#: seconds of queries before the compaction
BEFORE_SECONDS = 10.0
#: fraction of the live documents deleted before each kill trial
KILL_DELETE = 0.03


def vectors_for(ids: np.ndarray) -> np.ndarray:
    """Each chunk's vector, a function of its id alone (pseudo-random, unit length)."""
    rng = np.random.default_rng(17)
    freq, phase = rng.uniform(0.1, 50.0, DIM), rng.uniform(0, 2 * np.pi, DIM)
    x = np.sin(np.outer(np.asarray(ids, dtype=np.float64), freq) + phase)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def embed_texts(texts: list[str]) -> np.ndarray:
    """The audit's vectors: texts are "chunk <id>" (or a put document's, hashed at 384)."""
    ids = [int(t[6:]) if t.startswith("chunk ") else -1 for t in texts]
    out = vectors_for(np.array(ids))
    others = [i for i, cid in enumerate(ids) if cid < 0]
    if others:
        from ..compact_audit import hashing_vectors
        out[others] = hashing_vectors(DIM)([texts[i] for i in others])
    return out


def build_store(cfg, rows: int, dead: float, seed: int = 3) -> dict:
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    docs = rows // CHUNKS_PER_DOC
    with Store(cfg.db_path) as store, VectorWriter(cfg.vectors_path, dim=DIM, model_id=MODEL_ID) as w:
        store.ensure_model(MODEL_ID, DIM)
        now = time.time()
        for first in range(0, docs, BUILD_DOCS):
            batch = range(first, min(docs, first + BUILD_DOCS))
            ids = np.arange(first * CHUNKS_PER_DOC + 1, batch[-1] * CHUNKS_PER_DOC + CHUNKS_PER_DOC + 1)
            with store.transaction() as conn:
                conn.executemany("INSERT INTO documents(id, key, version, status, content_hash, source, title, bytes, "
                                 "n_chunks, created) VALUES (?, ?, 1, 'live', ?, 'bench', ?, 0, ?, ?)",
                                 [(d + 1, f"doc{d}", f"c{d}", f"doc{d}", CHUNKS_PER_DOC, now) for d in batch])
                conn.executemany("INSERT INTO chunks(id, doc_id, position, text, hash) VALUES (?, ?, ?, ?, ?)",
                                 [(int(c), int((c - 1) // CHUNKS_PER_DOC + 1), int((c - 1) % CHUNKS_PER_DOC),
                                   f"chunk {c}", f"h{c}") for c in ids])
            commit(store, w, ids.tolist(), vectors_for(ids))
        doomed = random.Random(seed).sample(range(docs), int(dead * docs))
        for part in range(0, len(doomed), 1000):
            with store.transaction():
                store._kill([d + 1 for d in doomed[part:part + 1000]])
        facts = {"rows": store.committed_rows(), "dead": store.dead_rows()}
    return {**facts, "seconds": time.perf_counter() - started, "dead_docs": set(doomed)}


class Load(threading.Thread):
    """Queries with live rows' own vectors, latency by phase; the top hit must be the row's chunk."""

    def __init__(self, s, live_ids: list[int]) -> None:
        super().__init__(daemon=True)
        self.s, self.ids = s, live_ids
        self.phase = "before"
        self.samples: dict[str, list[float]] = {}
        self.wrong: dict[str, int] = {}
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        rng = random.Random(1)
        with self.s.query_client(timeout=60) as client:
            while not self.halt.is_set():
                cid = rng.choice(self.ids)
                phase, started = self.phase, time.perf_counter()
                try:
                    hits = client.query_vector(vectors_for(np.array([cid])).astype(np.float32), k=10)
                except RoxiError as exc:
                    self.errors.append(f"{phase}: {exc}")
                    continue
                self.samples.setdefault(phase, []).append(time.perf_counter() - started)
                if not hits or hits[0].get("text") != f"chunk {cid}":
                    self.wrong[phase] = self.wrong.get(phase, 0) + 1


def compaction(s) -> dict:
    return s.role("indexer").get("compaction") or {}


def log_figure(path: Path, pattern: str) -> float | None:
    found = re.findall(pattern, path.read_text(errors="replace")) if path.exists() else []
    return float(found[-1]) if found else None


def main_compaction(s, cfg, built: dict) -> dict:
    with Store(cfg.db_path) as store:
        live = [r[0] for r in store.conn.execute("SELECT id FROM chunks WHERE state='indexed' ORDER BY random() "
                                                 "LIMIT 5000")]
    size_before = cfg.vectors_path.stat().st_size
    db_before = cfg.db_path.stat().st_size
    load = Load(s, live)
    load.start()
    time.sleep(BEFORE_SECONDS)
    put_done = {"n": 0}

    def ingest() -> None:  # documents put while the compaction runs: they must get indexed
        with Store(cfg.db_path) as store:
            for d in range(50):
                put(store, f"ingest{d}", texts_of(f"ingest{d}", 10))
                put_done["n"] += 1
        with s.control() as c:
            c.command("notify")

    load.phase = "during"
    started = time.perf_counter()
    with s.control(timeout=30) as c:
        reply = c.command("compact")
    writer = threading.Thread(target=ingest)
    writer.start()
    s.wait_for(lambda: compaction(s).get("count", 0) >= 1 and not compaction(s)["running"], timeout=3600,
               what="the compaction")
    seconds = time.perf_counter() - started
    writer.join()
    load.phase = "after"
    time.sleep(5)
    load.halt.set()
    load.join(timeout=120)
    s.wait_for(lambda: s.stats().pending == 0 and s.stats().leased == 0, timeout=600, what="the ingest indexed")
    info = compaction(s)
    logs = cfg.log_dir
    child_seconds = log_figure(logs / "compact.log", r"kept \d+ of \d+ rows in ([\d.]+) s")
    lat = {p: {"n": len(v), "p50_ms": percentile(v, 50) * 1e3, "p99_ms": percentile(v, 99) * 1e3}
           for p, v in load.samples.items()}
    return {"reply": reply, "seconds": seconds, "record": info.get("last"), "latency": lat, "wrong": load.wrong,
            "errors": len(load.errors), "error_sample": load.errors[:3], "child_seconds": child_seconds,
            "rows_per_second": built["rows"] / child_seconds if child_seconds else None,
            "switch_seconds": log_figure(logs / "indexer.log", r"held the write lock ([\d.]+) s"),
            "cleanup_seconds": log_figure(logs / "indexer.log", r"space given back, in ([\d.]+) s"),
            "file_before": size_before, "file_after": cfg.vectors_file(1).stat().st_size,
            "db_before": db_before, "db_after": cfg.db_path.stat().st_size, "ingested_docs": put_done["n"]}


def kill_trial(s, cfg, target: str, window: dict, rng: random.Random) -> dict:
    with Store(cfg.db_path) as store:
        keys = [r[0] for r in store.conn.execute("SELECT key FROM documents WHERE status='live' AND key LIKE 'doc%'")]
        for key in rng.sample(keys, int(KILL_DELETE * len(keys))):
            store.delete_document(key)
        epoch = store.vectors_epoch()
    with s.control(timeout=30) as c:
        c.command("compact")
    asked = time.perf_counter()
    if target == "child":  # a moment of the child's own run
        s.wait_for(lambda: any("roxi_mp.compact" in " ".join(p.cmdline()) for p in roxi_processes(cfg.data_dir)),
                   timeout=120, what="the compaction child")
        window = window["child"]
    else:
        window = window["whole"]
    time.sleep(rng.uniform(0.0, window))
    delay = time.perf_counter() - asked
    phase = "running" if compaction(s).get("running") else "not running"
    killed = target
    if target == "child":
        found = [p for p in roxi_processes(cfg.data_dir) if "roxi_mp.compact" in " ".join(p.cmdline())]
        if found:
            found[0].send_signal(signal.SIGKILL)
        else:
            killed = "nothing (the child had exited)"
    elif target == "indexer":
        os.kill(s.pid("indexer"), signal.SIGKILL)
    else:
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(timeout=60)
        for orphan in roxi_processes(cfg.data_dir):
            orphan.wait(timeout=120)
        s.start(timeout=300)
    s.wait_for(lambda: s.role("indexer")["state"] in ("running", "asleep", "suspended"), timeout=600, what="the indexer back")
    s.wait_for(lambda: not compaction(s).get("running"), timeout=600, what="no compaction running")
    facts = audit(cfg, dim=DIM, embed=embed_texts)
    return {"target": target, "killed": killed, "at_seconds": round(delay, 2), "phase": phase,
            "epoch_before": epoch, "epoch_after": facts["epoch"], "rows": facts["rows"], "audit": "pass"}


def run(quick: bool, *, rows: int | None = None, dead: float = 0.3, kills: int = 5) -> dict:
    rows = rows or (100_000 if quick else 1_000_000)
    with bench_system("compact", hashing__dim=DIM, indexer__compact_min_rows=10**12, query__cache_entries=0,
                      query__idle_seconds=3600.0, supervisor__start_timeout_seconds=300.0,
                      embedder__lease_seconds=60.0) as s:
        cfg = s.cfg
        built = build_store(cfg, rows, dead)
        s.start(timeout=300)
        main = main_compaction(s, cfg, built)
        main["audit"] = audit(cfg, dim=DIM, embed=embed_texts)["rows"]
        main["restarts"] = {r["name"]: r["restarts"] for r in s.status()["roles"]}  # none expected
        rng = random.Random(7)
        targets = ["indexer", "child", "supervisor", "indexer", "child", "supervisor"][:kills]
        window = {"whole": main["seconds"], "child": 0.8 * (main["child_seconds"] or 1.0)}
        trials = [kill_trial(s, cfg, t, window, rng) for t in targets]
        with s.control(timeout=30) as c:
            c.command("compact")
        s.wait_for(lambda: not compaction(s).get("running") and s.stats().dead_rows == 0, timeout=3600,
                   what="the last compaction")
        final = audit(cfg, dim=DIM, embed=embed_texts)
        final["bytes"] = final.pop("path").stat().st_size
        restarts = {r["name"]: r["restarts"] for r in s.status()["roles"]}
    return report(rows, dead, built, main, trials, final, restarts)


def report(rows, dead, built, main, trials, final, restarts) -> dict:
    lat, rec = main["latency"], main["record"] or {}
    fmt = lambda p: f"{lat[p]['p50_ms']:.1f} / {lat[p]['p99_ms']:.1f} ({lat[p]['n']})" if p in lat else "-"  # noqa: E731
    lines = [f"## Compaction: {rows:,} rows x {DIM}, {dead:.0%} of the documents deleted (acceptance 4)", "",
             table(["figure", "value"], [
                 ["store built directly", f"{built['seconds']:.0f} s, {built['rows']:,} rows, {built['dead']:,} dead"],
                 ["compaction (ask -> cleaned up)", f"{main['seconds']:.1f} s"],
                 ["child: rows copied per second", f"{main['rows_per_second']:,.0f}" if main["rows_per_second"] else "-"],
                 ["switch transaction (write lock held)", f"{main['switch_seconds']} s"],
                 ["cleanup (chunks, documents, vacuum)", f"{main['cleanup_seconds']} s"],
                 ["vectors file before -> after", f"{main['file_before'] / MB:.0f} -> {main['file_after'] / MB:.0f} MiB"
                                                  f" (live size: {(HEADER_BYTES + rec.get('rows_after', 0) * 2 * DIM) / MB:.0f})"],
                 ["database before -> after", f"{main['db_before'] / MB:.0f} -> {main['db_after'] / MB:.0f} MiB"],
                 ["query p50 / p99 ms (n): before", fmt("before")],
                 ["during", fmt("during")], ["after", fmt("after")],
                 ["wrong answers by phase, errors", f"{main['wrong'] or 0}, {main['errors']}"],
                 ["documents put during it (then indexed)", main["ingested_docs"]],
                 ["role restarts during it", main["restarts"]],
                 ["role restarts at the end (since the last supervisor start)", restarts],
             ]), "",
             table(["kill -9 of", "at s", "compaction was", "epoch before -> after", "rows", "audit"],
                   [[t["killed"], t["at_seconds"], t["phase"], f"{t['epoch_before']} -> {t['epoch_after']}",
                     f"{t['rows']:,}", t["audit"]] for t in trials]), "",
             f"last compaction: epoch {final['epoch']}, {final['rows']:,} rows, {final['dead']} dead, "
             f"file {final['bytes']:,} bytes = header + rows: audit pass"]
    data = {"rows": rows, "dead_fraction": dead, "built": {k: v for k, v in built.items() if k != "dead_docs"},
            "main": main, "trials": trials, "final": final, "restarts": restarts}
    return {"name": "compact", "markdown": "\n".join(lines) + "\n", "data": data}


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dead", type=float, default=0.3)
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args(argv)
    result = run(False, rows=args.rows, dead=args.dead, kills=args.kills)
    path = write_results("compact", {"machine": machine(), **result["data"]}, result["markdown"])
    print(result["markdown"])
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
