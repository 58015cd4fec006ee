"""Deep-sleep figures (issues 4 and 7): memory of every role, mapping, wake time, sleeping CPU.

    .venv/bin/python -m tests.bench.bench_sleep [--sizes 10000,100000,1000000] [--sleep-seconds 60]

For each size N (dim 384, generated unit vectors through the durable commit path), the RSS
of every process (supervisor, embedders, indexer, query server) three times: fresh (just
after the system is ready), awake (after `roxi ingest` of ~600 more chunks is indexed and
one full-scan query answered) and asleep (after `roxi sleep`, once the indexer too reports
asleep after `embedder.idle_seconds`). For the query server also: mapped bytes of the
vectors file from /proc/PID/smaps, wake-to-first-answer with the page cache warm and cold,
and the bound of acceptance 5 (awake <= 1.1 x rows x d x 2 + floor). Then CPU of the
supervisor and each role over `--sleep-seconds` of whole-system sleep.
"""

from __future__ import annotations

import argparse
import time

from roxi_mp import service
from roxi_mp.ingest import ingest_paths
from roxi_mp.memory import mapped, maps_file
from roxi_mp.store import Store

from ..corpus import populate, write_corpus
from .common import MB, bench_system, evict_page_cache, machine, median, rss, stop_on_sigterm, table, timed, write_results

import psutil

DIM = 384
QUERY = "synovial joint inflammation"
#: states of a role in whole-system deep sleep (suspended: exited, issue 22)
SLEEPING = ("asleep", "suspended")


def role_rss(s) -> dict[str, dict]:
    """RSS and reported state of the supervisor and every role."""
    out = {"supervisor": {"rss": rss(s.proc.pid), "state": "running"}}
    for r in s.status()["roles"]:  # a suspended role (issue 22) has no process: 0
        out[r["name"]] = {"rss": rss(r["pid"]) if r["pid"] else 0, "state": r["state"]}
    return out


def ingest_some(s, *, docs: int = 50) -> int:
    """Add ~12 chunks per doc through the ingest path and wake the embedders; returns chunks."""
    root = s.cfg.data_dir.parent / "docs"
    write_corpus(root, docs=docs, words=2000)
    with Store(s.cfg.db_path) as store:
        report = ingest_paths(store, [root], chunk_words=s.cfg.store.chunk_words,
                              chunk_overlap=s.cfg.store.chunk_overlap,
                              max_document_bytes=s.cfg.store.max_document_bytes)
    service.notify_ingest(s.cfg)
    return report.chunks


def measure_size(n: int, *, repeats: int = 3) -> dict:
    # Embedders and the indexer sleep after embedder.idle_seconds without work: short here.
    with bench_system(f"sleep-{n}", hashing__dim=DIM, query__idle_seconds=3600.0,
                      embedder__idle_seconds=5.0) as s:
        started = time.perf_counter()
        populate(s.cfg, rows=n)
        populate_s = time.perf_counter() - started
        s.start()
        fresh = role_rss(s)
        rows = n + ingest_some(s)
        s.wait_indexed(rows, timeout=600)
        pid = s.pid("query")
        floor = fresh["query"]["rss"]
        with s.query_client(timeout=120) as client:
            first_s, hits = timed(lambda: client.query(QUERY, k=10))
            assert len(hits) == 10
            awake_roles = role_rss(s)
            awake = awake_roles["query"]["rss"]
            held = mapped(pid, s.cfg.vectors_path)
            service.sleep_roles(s.cfg, None, wake=False)
            s.wait_for(lambda: all(r["state"] in SLEEPING for r in s.status()["roles"]), timeout=60,
                       what="every role asleep")
            asleep_roles = role_rss(s)
            warm, cold = [], []
            for _ in range(repeats):
                client.call("sleep")  # answered after the server is asleep (status lags a beat)
                asleep = rss(pid)
                still_mapped = maps_file(pid, s.cfg.vectors_path)
                warm.append(timed(lambda: client.query(QUERY, k=10))[0])
            for _ in range(repeats):
                client.call("sleep")
                evict_page_cache(s.cfg.vectors_path)
                cold.append(timed(lambda: client.query(QUERY, k=10))[0])
        data_bytes = rows * DIM * 2
        bound = 1.1 * data_bytes + floor
        roles = {name: {"fresh": fresh[name]["rss"], "awake": awake_roles[name]["rss"],
                        "awake_state": awake_roles[name]["state"], "asleep": asleep_roles[name]["rss"]}
                 for name in fresh}
        return {"n": n, "rows": rows, "dim": DIM, "populate_s": round(populate_s, 1), "roles": roles,
                "floor": floor, "awake": awake,
                "asleep": asleep, "asleep_minus_floor": asleep - floor, "mapped_size": held.size,
                "mapped_rss": held.rss, "mapped_after_sleep": still_mapped, "first_query_s": first_s,
                "wake_warm_s": median(warm), "wake_cold_s": median(cold), "warm_all": warm, "cold_all": cold,
                "data_bytes": data_bytes, "awake_bound": bound, "awake_within_bound": awake <= bound}


def measure_sleep_cpu(seconds: float) -> dict:
    with bench_system("sleep-cpu", hashing__dim=DIM, embedder__idle_seconds=1.0, query__idle_seconds=1.0) as s:
        populate(s.cfg, rows=10_000)
        s.start()
        with s.query_client() as client:
            client.query(QUERY, k=5)
        s.wait_for(lambda: all(r["state"] in SLEEPING for r in s.status()["roles"]), timeout=30,
                   what="every role asleep")
        names = {"supervisor": s.proc.pid, **{r["name"]: r["pid"] for r in s.status()["roles"] if r["pid"]}}
        procs = {name: psutil.Process(pid) for name, pid in names.items()}

        def cpu() -> dict[str, float]:
            return {name: p.cpu_times().user + p.cpu_times().system for name, p in procs.items()}

        before, started = cpu(), time.monotonic()
        time.sleep(seconds)
        after, elapsed = cpu(), time.monotonic() - started
        asleep = all(r["state"] in SLEEPING for r in s.status()["roles"])
        per = {name: (after[name] - before[name]) / elapsed for name in procs}
        return {"seconds": round(elapsed, 1), "all_asleep_at_end": asleep,
                "cpu_fraction_of_one_core": per, "total": sum(per.values())}


def measure_all(sizes: list[int], sleep_seconds: float) -> dict:
    return {"sizes": [measure_size(n) for n in sizes], "sleep_cpu": measure_sleep_cpu(sleep_seconds)}


def markdown(data: dict) -> str:
    results, cpu = data["sizes"], data["sleep_cpu"]
    rows = [[f"{r['n']:,}", f"{r['floor'] / MB:.1f}", f"{r['awake'] / MB:.1f}", f"{r['asleep'] / MB:.1f}",
             f"{r['asleep_minus_floor'] / MB:+.2f}", f"{r['mapped_size'] / MB:.1f} / {r['mapped_rss'] / MB:.1f}",
             "no" if not r["mapped_after_sleep"] else "YES", f"{r['wake_warm_s'] * 1000:.1f}",
             f"{r['wake_cold_s'] * 1000:.1f}",
             f"{r['awake_bound'] / MB:.0f} ({'ok' if r['awake_within_bound'] else 'OVER'})"]
            for r in results]
    role_rows = [[f"{r['n']:,}", name, f"{m['fresh'] / MB:.1f}", f"{m['awake'] / MB:.1f}"
                  + ("" if m["awake_state"] == "running" else f" ({m['awake_state']})"), f"{m['asleep'] / MB:.1f}"]
                 for r in results for name, m in r["roles"].items()]
    md = ["## Memory of every role, RSS (dim 384)", "",
          table(["N", "process", "fresh MB", "awake MB", "asleep MB"], role_rows), "",
          "fresh: just after start; awake: ~600 chunks ingested and indexed, then one full-scan query; "
          "asleep: after `roxi sleep` and the indexer's idle timeout.", "",
          "## Deep sleep (query server, dim 384)", "",
          table(["N", "floor MB", "awake MB", "asleep MB", "asleep - floor MB", "mapped size / rss MB",
                 "mapped asleep", "wake warm ms", "wake cold ms", "awake bound MB"], rows), "",
          f"CPU over {cpu['seconds']} s of whole-system sleep (fraction of one core): "
          + ", ".join(f"{k} {v * 100:.3f} %" for k, v in cpu["cpu_fraction_of_one_core"].items())
          + f"; total {cpu['total'] * 100:.3f} % (all asleep at end: {cpu['all_asleep_at_end']})"]
    return "\n".join(md) + "\n"


def run(quick: bool) -> dict:
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    data = measure_all(sizes, 10.0 if quick else 60.0)
    return {"name": "sleep", "markdown": markdown(data), "data": data}


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--sleep-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    data = measure_all([int(x) for x in args.sizes.split(",") if x], args.sleep_seconds)
    md = markdown(data)
    path = write_results("sleep", {"machine": machine(), **data}, md)
    print(md)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
