"""Uploads over the documents endpoint while queries run (issue 17, acceptance 6).

    .venv/bin/python -m tests.bench.bench_documents [--quick] [--backend hashing|minilm] [--rows 10000]
        [--docs-1k 10000] [--docs-1m 64] [--queries 1000] [--keep-querying]

A real system (supervisor and roles; hashing backend, dim 384, unless `--backend minilm`;
the query result cache off; the embedder and indexer settings bench_ingest measures) starts
over a store already holding `--rows` indexed chunks (tests.corpus.populate). Then, for 1 KB
and for 1 MB documents in turn (distinct pseudo-English from a seeded, Zipf-weighted word
list, made before the system starts):

1. idle: `--queries` text queries (QueryClient.query, k 10, with text), one at a time, a
   fixed mix of generated queries, with nothing uploading: p50 / p99.
2. upload: one DocumentsClient puts the documents one after another (content type
   text/markdown) while another thread of this process sends the same query mix in a loop.
   documents/s and MB/s are over the put phase, from the first put sent to the last put's
   reply. A put answers once the document is stored (its chunks pending), NOT once it is
   searchable. Query p50 / p99 are over the queries started during the put phase; the
   ratio is against the idle figures just before. The embedders and the indexer work on
   the new chunks meanwhile, so the load is the puts plus their ingest.
3. searchable: the querier stops when the last put answers (with `--keep-querying`, only
   once every chunk is indexed, and the latency after the puts is reported too); the clock
   runs on until `committed_rows` covers every uploaded chunk (polled every 50 ms: "all
   indexed"), then until a query for the last document's opening words returns that
   document ("found"). Chunks/s end to end = uploaded chunks / (first put to all indexed).
   The embedders yield to query traffic by design (`embedder.yield_batch_size` 8 chunks
   per `yield_pause_seconds` 0.2 s while the query server answered within `yield_seconds`
   5 s, i.e. about 40 chunks/s per embedder), so indexing crawls during the put phase and
   runs at full speed only about 5 s after the queries stop: this figure is mostly that
   policy, not the embedding speed (bench_ingest measures that).

The bench process's two threads share its GIL; the documents are made beforehand, so the
uploading thread mostly waits on its socket. On a 2-core machine every role, the client
threads and any neighbour's load share the cores: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from itertools import accumulate
from typing import Any

import numpy as np

from roxi_mp.client import DocumentsClient, QueryClient
from roxi_mp.store import Store

from ..corpus import WORDS as MEDICAL_WORDS, populate
from .bench_ingest import CONFIG as INGEST_CONFIG
from .common import bench_system, machine, stop_on_sigterm, table, write_results

K = 10
KB, MB = 1024, 1 << 20
#: queries in the mix, cycled through by every phase
QUERY_MIX = 64
#: seconds to wait for the uploads to be indexed and found, whatever the machine's load
PATIENCE = 1800.0
#: what every system here runs with, over bench_system's defaults (see the module docstring)
CONFIG: dict[str, Any] = {**INGEST_CONFIG, "query__cache_entries": 0, "query__idle_seconds": 3600.0,
                          "embedder__idle_seconds": 3600.0}

COMMON_WORDS = """the of and to in a is that for it as was with be by on not he this are or his from at
which but have an they you were her she there been one all we their has would when if so no will more
can out other up into some what than them then about these only its two may time any could first over
after most also made did many before must through back years where much your way well down should
because each just those people how too little state good very make world still own see men work long get
here between both life being under never day same another know while last might great old year off come
since against go came right used take three states himself few house use during without again place
around however home small found thought went say part once general high upon school every does got united
left number course war until always away something fact though water less public put think almost hand
enough far took head yet government system better set told nothing night end why called didn eyes find
going look asked later point knew city next program business give group toward young days let room
president side social given present several order national possible rather second face per among form
important often things looking early white case john become large big need four within felt along children
saw best church ever least power development light thing seemed family interest want members mind country
area others done turned although open god service problem certain kind different thus began door help
sense means whole matter perhaps itself york times human law line above name example action company hands
local show whether five history gave today either act feet across taken past quite anything seen having
death experience body word half really field week car words already information tell together college shall
money period held keep sure probably free seems real behind cannot miss political air question office""".split()
#: vocabulary by rank: a Zipf-weighted choice over it reads like English word frequencies
VOCABULARY = COMMON_WORDS + MEDICAL_WORDS
CUM_WEIGHTS = list(accumulate(1.0 / (rank + 1) for rank in range(len(VOCABULARY))))


def sentence(rng: random.Random) -> str:
    words = rng.choices(VOCABULARY, cum_weights=CUM_WEIGHTS, k=rng.randint(6, 22))
    if rng.random() < 0.3:
        words.insert(rng.randint(1, len(words) - 1), f"{rng.randint(2, 500)}")
    return " ".join(words).capitalize() + rng.choice(".....?!")


def document(seed: str, size: int) -> str:
    """A markdown document of at most `size` bytes (cut at a word), distinct for each seed."""
    rng = random.Random(seed)
    parts = [f"# {sentence(rng)[:-1].title()}\n\nReference {seed}.\n"]
    length = len(parts[0])
    while length < size:
        paragraph = " ".join(sentence(rng) for _ in range(rng.randint(3, 8))) + "\n"
        if rng.random() < 0.1:
            paragraph = f"\n## {sentence(rng)[:-1].title()}\n\n" + paragraph
        parts.append("\n" + paragraph)
        length += len(parts[-1])
    text = "".join(parts)
    return text if len(text) <= size else text[:text.rindex(" ", 0, size)] + "\n"


def query_mix(seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(VOCABULARY, cum_weights=CUM_WEIGHTS, k=rng.randint(3, 8))) for _ in range(QUERY_MIX)]


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0, "p50": float("nan"), "p99": float("nan")}
    return {"n": len(samples), "p50": float(np.percentile(samples, 50)), "p99": float(np.percentile(samples, 99))}


def timed_queries(client: QueryClient, texts: list[str], *, count: int | None = None,
                  stop: threading.Event | None = None, times: list[tuple[float, float]] | None = None
                  ) -> list[float]:
    """Latency of each query, the mix cycled, for `count` queries or until `stop` is set.
    Each (start, seconds) is appended to `times` as it comes; the seconds are returned."""
    times = [] if times is None else times
    i = 0
    while (count is None or i < count) and not (stop is not None and stop.is_set()):
        started = time.perf_counter()
        client.query(texts[i % len(texts)], k=K)
        times.append((started, time.perf_counter() - started))
        i += 1
    return [seconds for _, seconds in times]


class Querier(threading.Thread):
    """The other thread: queries in a loop with its own socket until `stop` is set."""

    def __init__(self, cfg, texts: list[str]) -> None:
        super().__init__(name="querier", daemon=True)
        self.cfg, self.texts = cfg, texts
        self.stop = threading.Event()
        self.times: list[tuple[float, float]] = []  # (start, seconds)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with QueryClient.for_config(self.cfg, timeout=60) as client:
                timed_queries(client, self.texts, stop=self.stop, times=self.times)
        except BaseException as exc:  # re-raised by finish(), in the main thread
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=120)
        if self.error is not None:
            raise self.error

    def between(self, start: float, end: float) -> list[float]:
        """Latencies of the queries started in [start, end)."""
        return [seconds for began, seconds in self.times if start <= began < end]


def upload(s, label: str, docs: list[str], texts: list[str], *, keep_querying: bool) -> dict:
    """Puts `docs` while the querier runs; then waits until they are indexed and found. The
    querier stops when the last put answers, or with `keep_querying` once all are indexed."""
    with Store(s.cfg.db_path) as store:
        base = store.committed_rows()
    querier = Querier(s.cfg, texts)
    querier.start()
    while not querier.times and querier.is_alive():  # its socket is connected and answering
        time.sleep(0.01)
    put_times: list[float] = []
    chunks = 0
    with DocumentsClient.for_config(s.cfg, timeout=120) as client:
        started = time.perf_counter()
        for i, text in enumerate(docs):
            t0 = time.perf_counter()
            chunks += client.put(f"bench/{label}/{i:06d}", text, content_type="text/markdown")["chunks"]
            put_times.append(time.perf_counter() - t0)
        put_end = time.perf_counter()
    if not keep_querying:
        querier.finish()
    with Store(s.cfg.db_path) as store:
        indexed_at_return = store.committed_rows() - base
        while store.committed_rows() < base + chunks:
            check_alive(s, started, f"{chunks} uploaded chunks indexed")
            time.sleep(0.05)
    indexed = time.perf_counter()
    querier.finish()
    found_s = wait_found(s, docs[-1], started)
    nbytes = sum(len(d.encode()) for d in docs)
    put_s, indexed_s = put_end - started, indexed - started
    return {"label": label, "documents": len(docs), "bytes": nbytes, "chunks": chunks, "put_s": put_s,
            "docs_per_s": len(docs) / put_s, "mb_per_s": nbytes / MB / put_s, "put": percentiles(put_times),
            "during": percentiles(querier.between(started, put_end)),
            "indexing": percentiles(querier.between(put_end, indexed)), "keep_querying": keep_querying,
            "indexed_at_return": indexed_at_return, "indexed_s": indexed_s, "chunks_per_s": chunks / indexed_s,
            "found_s": found_s}


def check_alive(s, started: float, what: str) -> None:
    if s.proc.poll() is not None or time.perf_counter() - started > PATIENCE:
        raise RuntimeError(f"gave up waiting for {what}\n{s.logs()}")


def wait_found(s, doc: str, started: float) -> float:
    """Seconds from `started` until a query for `doc`'s opening words returns its first chunk."""
    opening = doc.split()[:60]
    with QueryClient.for_config(s.cfg, timeout=60) as client:
        while True:
            hits = client.query(" ".join(opening), k=K)
            if any(hit["text"].split()[:60] == opening for hit in hits):
                return time.perf_counter() - started
            check_alive(s, started, "the last document found by a query")
            time.sleep(0.05)


def measure(backend: str, rows: int, counts: dict[str, tuple[int, int]], idle_queries: int, *,
            keep_querying: bool = False) -> dict:
    docs = {label: [document(f"{label}-{i}", size) for i in range(n)] for label, (size, n) in counts.items()}
    texts = query_mix()
    overrides = {**CONFIG, "embedder__backend": backend}
    with bench_system("documents", **overrides) as s:
        populate(s.cfg, rows=rows)
        s.start(timeout=120)
        phases = []
        with QueryClient.for_config(s.cfg, timeout=60) as client:
            for label in counts:
                timed_queries(client, texts, count=10)  # wake and map
                idle = percentiles(timed_queries(client, texts, count=idle_queries))
                phases.append({**upload(s, label, docs[label], texts, keep_querying=keep_querying), "idle": idle})
        time.sleep(2 * s.cfg.supervisor.heartbeat_seconds)  # the roles' last counters reach the supervisor
        roles = {r["name"]: {k: r.get(k) for k in ("embedded", "batches", "yields", "commits", "puts")
                             if r.get(k) is not None} for r in s.status()["roles"]}
        return {"backend": backend, "dim": s.cfg.hashing.dim if backend == "hashing" else None, "rows": rows,
                "idle_queries": idle_queries, "keep_querying": keep_querying, "config": overrides,
                "phases": phases, "roles": roles}


def latency(p: dict) -> str:
    return f"{p['p50'] * 1e3:.2f} / {p['p99'] * 1e3:.2f} ({p['n']})"


def markdown(data: dict) -> str:
    phases, keep = data["phases"], data["keep_querying"]
    upload_rows = [[p["label"], f"{p['documents']:,}", f"{p['bytes'] / MB:.1f}", f"{p['put_s']:.1f}",
                    f"{p['docs_per_s']:,.1f}", f"{p['mb_per_s']:.2f}",
                    f"{p['put']['p50'] * 1e3:.1f} / {p['put']['p99'] * 1e3:.1f}"] for p in phases]
    query_rows = [[p["label"], latency(p["idle"]), latency(p["during"]),
                   f"{p['during']['p50'] / p['idle']['p50']:.2f}", f"{p['during']['p99'] / p['idle']['p99']:.2f}",
                   *([latency(p["indexing"])] if keep else [])] for p in phases]
    ingest_rows = [[p["label"], f"{p['chunks']:,}", f"{p['indexed_at_return']:,}", f"{p['indexed_s']:.1f}",
                    f"{p['chunks_per_s']:,.0f}", f"{p['found_s']:.1f}"] for p in phases]
    backend = data["backend"] + (f", dim {data['dim']}" if data["dim"] else "")
    stop = "once every chunk is indexed" if keep else "when the last put answers"
    return "\n".join([
        f"## Uploads over the documents endpoint while queries run ({backend}; "
        f"{data['rows']:,} chunks indexed before; bench_documents.py)", "",
        "Put phase (one client, puts back to back; a put answers when stored, not when searchable):", "",
        table(["documents", "count", "MB", "put phase s", "documents/s", "MB/s", "put p50 / p99 ms"], upload_rows), "",
        f"Text queries, k {K}, one at a time, same mix, p50 / p99 ms (queries): idle just before, and from "
        "another thread during the put phase:", "",
        table(["documents", "idle", "during puts", "p50 ratio", "p99 ratio",
               *(["after the puts, until indexed"] if keep else [])], query_rows), "",
        "Searchable: from the first put until every uploaded chunk was committed, and until a query for the "
        f"last document's opening returned it (the querier stops {stop}; embedders yield to queries):", "",
        table(["documents", "chunks", "indexed when puts ended", "all indexed s", "chunks/s end to end",
               "last document found s"], ingest_rows), "",
        "roles at the end: " + "; ".join(f"{name} {info}" for name, info in data["roles"].items() if info),
    ]) + "\n"


def run(quick: bool, *, backend: str = "hashing", rows: int = 10_000, docs_1k: int | None = None,
        docs_1m: int | None = None, queries: int | None = None, keep_querying: bool = False) -> dict:
    counts = {"1 KB": (KB, docs_1k or (2000 if quick else 10_000)), "1 MB": (MB, docs_1m or (16 if quick else 64))}
    data = measure(backend, rows, counts, queries or (500 if quick else 1000), keep_querying=keep_querying)
    return {"name": "documents", "markdown": markdown(data), "data": data}


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2000 x 1 KB, 16 x 1 MB, 500 idle queries")
    parser.add_argument("--backend", choices=("hashing", "minilm"), default="hashing")
    parser.add_argument("--rows", type=int, default=10_000, help="chunks indexed before the uploads")
    parser.add_argument("--docs-1k", type=int, help="1 KB documents to put (default 10000, quick 2000)")
    parser.add_argument("--docs-1m", type=int, help="1 MB documents to put (default 64, quick 16)")
    parser.add_argument("--queries", type=int, help="idle queries before each upload (default 1000, quick 500)")
    parser.add_argument("--keep-querying", action="store_true",
                        help="query on after the puts until every chunk is indexed (indexing then runs "
                             "at the embedders' yield pace: use few documents)")
    args = parser.parse_args(argv)
    result = run(args.quick, backend=args.backend, rows=args.rows, docs_1k=args.docs_1k, docs_1m=args.docs_1m,
                 queries=args.queries, keep_querying=args.keep_querying)
    path = write_results("documents", {"machine": machine(), **result["data"]}, result["markdown"])
    print(result["markdown"])
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
