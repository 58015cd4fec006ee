"""Deep-sleep figures (issue 4): memory awake and asleep, mapping, wake time, sleeping CPU.

    .venv/bin/python -m tests.bench.bench_sleep [--sizes 10000,100000,1000000] [--sleep-seconds 60]

For each size N (dim 384, generated unit vectors through the durable commit path): the
query server's fresh-process floor, RSS awake after a full-scan query, mapped bytes of the
vectors file from /proc/PID/smaps, RSS after `sleep`, wake-to-first-answer with the page
cache warm and cold, and the bound of acceptance 5 (awake <= 1.1 x N x d x 2 + floor).
Then CPU of the supervisor and each role over `--sleep-seconds` of whole-system sleep.
"""

from __future__ import annotations

import argparse
import time

from roxi_mp.memory import mapped, maps_file

from ..corpus import populate
from .common import MB, bench_system, evict_page_cache, machine, median, rss, table, timed, write_results

import psutil

DIM = 384
QUERY = "synovial joint inflammation"


def measure_size(n: int, *, repeats: int = 3) -> dict:
    with bench_system(f"sleep-{n}", hashing__dim=DIM, query__idle_seconds=3600.0) as s:
        started = time.perf_counter()
        populate(s.cfg, rows=n)
        populate_s = time.perf_counter() - started
        s.start()
        pid = s.pid("query")
        floor = rss(pid)
        with s.query_client(timeout=120) as client:
            first_s, hits = timed(lambda: client.query(QUERY, k=10))
            assert len(hits) == 10
            awake = rss(pid)
            held = mapped(pid, s.cfg.vectors_path)
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
        data_bytes = n * DIM * 2
        bound = 1.1 * data_bytes + floor
        return {"n": n, "dim": DIM, "populate_s": round(populate_s, 1), "floor": floor, "awake": awake,
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
        s.wait_for(lambda: all(r["state"] == "asleep" for r in s.status()["roles"]), timeout=30,
                   what="every role asleep")
        names = {"supervisor": s.proc.pid, **{r["name"]: r["pid"] for r in s.status()["roles"]}}
        procs = {name: psutil.Process(pid) for name, pid in names.items()}

        def cpu() -> dict[str, float]:
            return {name: p.cpu_times().user + p.cpu_times().system for name, p in procs.items()}

        before, started = cpu(), time.monotonic()
        time.sleep(seconds)
        after, elapsed = cpu(), time.monotonic() - started
        asleep = all(r["state"] == "asleep" for r in s.status()["roles"])
        per = {name: (after[name] - before[name]) / elapsed for name in procs}
        return {"seconds": round(elapsed, 1), "all_asleep_at_end": asleep,
                "cpu_fraction_of_one_core": per, "total": sum(per.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--sleep-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    results = [measure_size(n) for n in sizes]
    cpu = measure_sleep_cpu(args.sleep_seconds)
    rows = [[f"{r['n']:,}", f"{r['floor'] / MB:.1f}", f"{r['awake'] / MB:.1f}", f"{r['asleep'] / MB:.1f}",
             f"{r['asleep_minus_floor'] / MB:+.2f}", f"{r['mapped_size'] / MB:.1f} / {r['mapped_rss'] / MB:.1f}",
             "no" if not r["mapped_after_sleep"] else "YES", f"{r['wake_warm_s'] * 1000:.1f}",
             f"{r['wake_cold_s'] * 1000:.1f}",
             f"{r['awake_bound'] / MB:.0f} ({'ok' if r['awake_within_bound'] else 'OVER'})"]
            for r in results]
    md = ["## Deep sleep (query server, dim 384)", "",
          table(["N", "floor MB", "awake MB", "asleep MB", "asleep - floor MB", "mapped size / rss MB",
                 "mapped asleep", "wake warm ms", "wake cold ms", "awake bound MB"], rows), "",
          f"CPU over {cpu['seconds']} s of whole-system sleep (fraction of one core): "
          + ", ".join(f"{k} {v * 100:.3f} %" for k, v in cpu["cpu_fraction_of_one_core"].items())
          + f"; total {cpu['total'] * 100:.3f} % (all asleep at end: {cpu['all_asleep_at_end']})"]
    markdown = "\n".join(md) + "\n"
    path = write_results("sleep", {"machine": machine(), "sizes": results, "sleep_cpu": cpu}, markdown)
    print(markdown)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
