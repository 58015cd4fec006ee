"""`./run.sh bench [--quick]`: run the benchmarks one after another and write one report.

Each module in MODULES exposes `run(quick) -> {"name", "markdown", "data"}`; its table is
printed as soon as it finishes, and at the end tests/bench/out/bench-<time>.md (every
table, the scaling table and plot), bench-<time>.json (machine, package versions, all
data) and bench-<time>-scaling.png are written (see report.py). A module that is missing,
has no `run` or fails is skipped with a note, and the exit code is 1 if one failed.
--quick keeps to 10k and 100k vectors (under 5 minutes on 2 cores); the full run adds 1M.
Run it on a quiet machine, from a checkout nobody edits meanwhile (the systems it starts
import the code afresh).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

from . import report
from .common import stop_on_sigterm

#: benchmark modules, in the order they run
MODULES = ("bench_query", "bench_ann", "bench_throughput", "bench_ingest", "bench_sleep", "bench_minilm_ingest",
           "bench_query_embed", "bench_filter", "bench_compact", "bench_documents", "bench_extract")


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(prog="./run.sh bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k vectors only, a few minutes")
    parser.add_argument("--only", help="comma-separated module names (default: all of MODULES)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else MODULES
    started = time.perf_counter()
    results: dict[str, dict] = {}
    notes: list[str] = []
    failed = False
    for name in names:
        try:
            module = importlib.import_module(f".{name}", __package__)
        except ImportError as exc:
            notes.append(f"{name} skipped: cannot import it ({exc})")
            continue
        if not hasattr(module, "run"):
            notes.append(f"{name} skipped: it has no run(quick)")
            continue
        print(f"# {name}{' --quick' if args.quick else ''} ...", flush=True)
        module_started = time.perf_counter()
        try:
            result = module.run(args.quick)
        except Exception:
            traceback.print_exc()
            notes.append(f"{name} failed: {traceback.format_exc().splitlines()[-1]}")
            failed = True
            continue
        results[result["name"]] = result
        print(result["markdown"], flush=True)
        print(f"({name}: {time.perf_counter() - module_started:.0f} s)\n", flush=True)
    seconds = time.perf_counter() - started
    path = report.write(results, notes, quick=args.quick, seconds=seconds)
    print(report.scaling_markdown(report.scaling(results)))
    for note in notes:
        print(f"note: {note}")
    print(f"whole run {seconds:.0f} s; report: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
