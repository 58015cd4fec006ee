"""Soak under fault injection: ingest while clients query and a chaos loop kill -9's roles.

    .venv/bin/python -m tests.bench.soak [--seconds 300] [--kill-every 4-9] [--clients 2]

A real system (hashing backend, 2 embedders, durable commits) runs for `--seconds`. A
feeder runs `roxi ingest` on a fresh batch of generated documents every few seconds; query
clients (own processes' worth of sockets, in threads) ask for the exact text of a random
chunk already indexed; the chaos loop kill -9's a random role (embedder, indexer, query)
every few seconds, and once, halfway, the supervisor itself (its roles die with it; the
system is started again). Deep sleep is mixed in (issue 22): some rounds send `sleep` or
`wake` to every role instead of a kill, and the feeder now and then pauses longer than
the embedders' idle time, so the embedders and the indexer exit (suspended) and are
started again by the next ingest, by the supervisor's look at the store, or by a wake,
while queries and kills go on. At the end, with the chaos stopped, everything must get indexed:

- nothing lost, nothing duplicated: every chunk indexed once, rows exactly 0..n-1, each
  row holding its own chunk's vector (tests.corpus.check_exactly_once);
- no wrong answer: every reply's first hit for a chunk's own text (a dense query) or, every
  other query, for its own vector (the query server's fast path, issue 21) is that text,
  with score ~1 (the hashing backend is deterministic), and every hit's row, chunk and
  document agree with the store. Failed requests (a query server being killed) are counted, not wrong.

Issue 8's acceptance 4: 5 minutes with >= 20 kills, nothing lost or duplicated; issue 22's
4: the same with deep sleep cycles (>= 3 sleeps, roles resumed from suspended). Exit code
0 when every check holds, 1 otherwise. Not part of the test suite (it takes minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from roxi_mp import protocol
from roxi_mp.client import QueryClient
from roxi_mp.embedders import make_embedder
from roxi_mp.errors import RoxiError
from roxi_mp.service import READY_STATES
from roxi_mp.store import Store

from ..conftest import clean_env
from ..corpus import check_exactly_once, write_corpus
from .common import machine, make_system, stop_on_sigterm, table, temp_root, write_results

SETTINGS = {
    "hashing__dim": 128,
    "embedder__count": 2,
    "embedder__batch_size": 16,
    "embedder__lease_seconds": 3.0,
    "query__cache_entries": 0,
    # The chaos kills the same role often; the point is recovery, not the flapping guard.
    "restart__flap_count": 10_000,
    "backup__milestones": False,
    # Idle this long, embedders and the indexer sleep (and exit): within the soak, often.
    "embedder__idle_seconds": 3.0,
    "embedder__wake_check_seconds": 2.0,
}
#: chance that a chaos round sends `sleep` / `wake` to every role instead of a kill
SLEEP_CHANCE, WAKE_CHANCE = 0.2, 0.1
#: every this many ingest batches the feeder pauses past the idle time: the roles suspend
QUIET_EVERY = 4


class Soak:
    def __init__(self, root: Path, *, seconds: float, kill_every: tuple[float, float], clients: int,
                 seed: int) -> None:
        self.root = root
        self.system = make_system(root, **SETTINGS)
        self.cfg = self.system.cfg
        self.seconds = seconds
        self.kill_every = kill_every
        self.clients = clients
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.kills: Counter[str] = Counter()
        self.cycles: Counter[str] = Counter()  # sleep and wake commands sent, suspensions seen
        self.resumes = 0  # starts out of suspended, summed over the supervisor's lives
        self.queries: Counter[str] = Counter()  # ok, failed, wrong, not yet followed; by vector, by text
        self.fast_total = self.fast_last = 0  # fast-path answers seen in earlier server lives, and this one
        self.wrong: list[str] = []
        self.batches = 0
        self.ingest_failures = 0
        self.system_down = threading.Event()  # set while the supervisor is being restarted

    # --- the three loops --------------------------------------------------------------
    def feed(self) -> None:
        while not self.stop.is_set():
            self.batches += 1
            docs = write_corpus(self.root / f"docs-{self.batches}", docs=12, words=500, seed=self.batches)
            done = subprocess.run([sys.executable, "-m", "roxi_mp.cli", *self.cfg.to_argv(), "ingest",
                                   str(docs[0].parent)], capture_output=True, text=True, env=clean_env(), timeout=120)
            if done.returncode != 0:
                self.ingest_failures += 1  # each document is its own transaction: none is half in
            quiet = self.batches % QUIET_EVERY == 0  # long enough for the roles to suspend
            self.stop.wait(SETTINGS["embedder__idle_seconds"] + 4.0 if quiet else 2.0)

    def ask(self) -> None:
        client = QueryClient.for_config(self.cfg, timeout=5.0)
        model = make_embedder(self.cfg)  # the hashing backend: the vectors the store holds
        store: Store | None = None
        by_vector = False
        while not self.stop.is_set():
            if self.system_down.is_set():
                time.sleep(0.2)
                continue
            try:
                store = store or Store(self.cfg.db_path)
                row = store.conn.execute("SELECT id, text, row FROM chunks WHERE row IS NOT NULL "
                                         "ORDER BY random() LIMIT 1").fetchone()
                if row is None:
                    time.sleep(0.2)
                    continue
                # Dense: a chunk's own text is then its own best hit with score ~1 (hybrid,
                # the default since issue 19, may rank an overlapping neighbour first: its
                # words weigh in). Every hit's identity is checked below either way.
                by_vector = not by_vector
                if by_vector:  # every other query: the chunk's own vector, which the fast path answers
                    meta, buf = protocol.encode_array(model.encode([row[1]])[0])
                    reply, _ = client.call_raw("query", frames=[buf], k=5, **meta)
                else:
                    reply = client.call("query", text=row[1], k=5, mode="dense")
            except RoxiError:
                self._count("failed")
                time.sleep(0.1)
                continue
            if row[2] >= reply["rows"]:
                self._count("not yet followed")  # committed a moment ago; the server maps it next
                continue
            problem = self._check(store, row, reply["hits"], scored=not by_vector)
            self._count("wrong" if problem else "ok")
            self._count("by vector" if by_vector else "by text")
            if by_vector and self.queries["by vector"] % 50 == 0:
                self._fast_served(client)
            if problem:
                with self.lock:
                    self.wrong.append(problem)
        client.close()
        if store is not None:
            store.close()

    def _check(self, store: Store, asked: tuple[int, str, int], hits: list[dict], *, scored: bool) -> str | None:
        """`scored`: a dense text query, whose first score is the cosine (a vector alone is
        scored as the configured mode says: its first hit is still the chunk itself)."""
        if not hits:
            return f"no hit for indexed chunk {asked[0]}"
        if hits[0]["text"] != asked[1] or (hits[0]["score"] < 0.999 if scored else hits[0]["dense_rank"] != 1):
            return f"chunk {asked[0]}: first hit is chunk {hits[0]['chunk_id']} with score {hits[0]['score']:.4f}"
        for hit in hits:
            if hit["row"] is None:
                # Found by its words alone (hybrid search, issue 19): a chunk not embedded
                # when the query ran (it may be by now), of the document the reply names.
                found = store.conn.execute("SELECT id, doc_id FROM chunks WHERE id = ?", (hit["chunk_id"],)).fetchone()
                if found != (hit["chunk_id"], hit["doc_id"]) or hit["embedded"]:
                    return f"chunk {hit['chunk_id']} (not embedded) is {found} in the store, the reply says {hit}"
                continue
            found = store.conn.execute("SELECT id, doc_id FROM chunks WHERE row = ?", (hit["row"],)).fetchone()
            if found != (hit["chunk_id"], hit["doc_id"]):
                return f"row {hit['row']} is chunk {found} in the store, the reply says {hit['chunk_id']}"
        return None

    def _fast_served(self, client: QueryClient) -> None:
        """Count the query server's fast-path answers, across its restarts (at least)."""
        try:
            now = client.stats().get("fast_served", 0)
        except RoxiError:
            return
        with self.lock:
            if now < self.fast_last:  # a new server life
                self.fast_total += self.fast_last
            self.fast_last = now

    def _count(self, what: str) -> None:
        with self.lock:
            self.queries[what] += 1

    def chaos(self, deadline: float) -> None:
        supervisor_at = time.monotonic() + self.seconds / 2
        while time.monotonic() < deadline:
            time.sleep(self.rng.uniform(*self.kill_every))
            if time.monotonic() >= deadline:
                break
            if supervisor_at and time.monotonic() >= supervisor_at:
                supervisor_at = 0.0
                self.kill_supervisor()
                continue
            try:
                rows = self.system.status()["roles"]
            except RoxiError:
                continue  # the supervisor is busy or starting: try at the next round
            self.cycles["suspended seen"] += sum(r["state"] == "suspended" for r in rows)
            roll = self.rng.random()
            if roll < SLEEP_CHANCE + WAKE_CHANCE:
                op = "sleep" if roll < SLEEP_CHANCE else "wake"
                try:
                    with self.system.control() as control:
                        control.command(op)
                    self.cycles[op] += 1
                except RoxiError:
                    pass
                continue
            roles = [r for r in rows if r["state"] in READY_STATES and r["pid"]]
            if roles:
                victim = self.rng.choice(roles)
                try:
                    os.kill(victim["pid"], signal.SIGKILL)
                    self.kills[victim["name"].split("-")[0]] += 1
                except ProcessLookupError:
                    pass

    def count_resumes(self) -> None:
        with contextlib.suppress(RoxiError):
            self.resumes += sum(r.get("resumes", 0) for r in self.system.status()["roles"])

    def kill_supervisor(self) -> None:
        self.count_resumes()  # the supervisor's counts die with it
        self.system_down.set()
        os.kill(self.system.proc.pid, signal.SIGKILL)
        self.system.proc.wait(timeout=10)
        self.kills["supervisor"] += 1
        time.sleep(1.0)  # PDEATHSIG ends the roles
        self.system.log.close()
        self.system.start(timeout=60)
        self.system_down.clear()

    # --- the run ------------------------------------------------------------------------
    def run(self) -> dict:
        started = time.monotonic()
        self.system.start()
        threads = [threading.Thread(target=self.feed, daemon=True)]
        threads += [threading.Thread(target=self.ask, daemon=True) for _ in range(self.clients)]
        for t in threads:
            t.start()
        self.chaos(started + self.seconds)
        self.stop.set()
        for t in threads:
            t.join(timeout=150)
        chaos_seconds = time.monotonic() - started
        with Store(self.cfg.db_path) as store:
            total = store.stats().chunks
        self.system.wait_indexed(total, timeout=180)
        indexed_once = check_exactly_once(self.cfg)
        with self.system.control() as c:
            restarts = {r["name"]: r["restarts"] for r in c.command("status")["roles"]}
        self.count_resumes()
        return {"seconds": round(chaos_seconds, 1), "kills": dict(self.kills), "kills_total": sum(self.kills.values()),
                "sleep_cycles": dict(self.cycles), "resumes": self.resumes,
                "chunks": total, "indexed_exactly_once": indexed_once, "ingest_batches": self.batches,
                "ingest_failures": self.ingest_failures, "queries": dict(self.queries),
                "fast_path_answers_at_least": self.fast_total + self.fast_last,
                "wrong_examples": self.wrong[:10], "restarts_since_last_start": restarts}


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--kill-every", default="4-9", help="seconds between kills: MIN-MAX")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    low, high = (float(x) for x in args.kill_every.split("-"))
    root = temp_root("soak")
    soak = Soak(root, seconds=args.seconds, kill_every=(low, high), clients=args.clients, seed=args.seed)
    try:
        result = soak.run()
    finally:
        soak.system.stop()
        soak.system.kill_everything()
    ok = (result["indexed_exactly_once"] == result["chunks"] and not result["queries"].get("wrong")
          and result["kills_total"] >= 20 and result["sleep_cycles"].get("sleep", 0) >= 3 and result["resumes"] >= 1)
    rows = [[f"{result['seconds']:.0f}", result["kills_total"], ", ".join(f"{k} {v}" for k, v in sorted(result["kills"].items())),
             result["chunks"], result["indexed_exactly_once"], result["queries"].get("ok", 0),
             result["queries"].get("failed", 0), result["queries"].get("wrong", 0), result["ingest_failures"],
             ", ".join(f"{k} {v}" for k, v in sorted(result["sleep_cycles"].items())), result["resumes"]]]
    md = "\n".join(["## Soak: ingest + queries + kill -9 chaos", "",
                    table(["seconds", "kills", "by role", "chunks", "indexed exactly once", "queries ok",
                           "queries failed (server killed)", "wrong answers", "ingest runs failed",
                           "deep sleep", "resumes"], rows),
                    "", f"queries by text {result['queries'].get('by text', 0)}, by vector "
                    f"{result['queries'].get('by vector', 0)}; the fast path answered at least "
                    f"{result['fast_path_answers_at_least']}",
                    "", f"result: {'PASS' if ok else 'FAIL'} (nothing lost or duplicated, no wrong answer, >= 20 kills, "
                    ">= 3 sleeps and a role resumed from suspended)"]) + "\n"
    path = write_results("soak", {"machine": machine(), **result, "pass": ok}, md)
    print(md)
    print(json.dumps(result["wrong_examples"], indent=1) if result["wrong_examples"] else "no wrong answers")
    print(f"written: {path}")
    shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
