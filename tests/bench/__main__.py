"""`./run.sh bench [--quick]`: run the benchmarks one after another and write one report.

Each module in MODULES exposes `run(quick) -> {"name", "markdown", "data"}`; its table is
printed as soon as it finishes, and at the end tests/bench/out/bench-<time>.md (every
table, the scaling table and plot), bench-<time>.json (machine, package versions, all
data) and bench-<time>-scaling.png are written (see report.py). A module that is missing,
has no `run` or fails is skipped with a note, and the exit code is 1 if one failed.
--quick keeps to 10k and 100k vectors (under 5 minutes on 2 cores); the full run adds 1M.
Run it on a quiet machine, from a checkout nobody edits meanwhile (the systems it starts
import the code afresh).

`--beir [DIR]` runs only bench_beir, the SciFact retrieval benchmark (DIR defaults to
../shared/beir/scifact beside the checkout; absent: one line, exit 0); `--store ROOT` keeps
and reuses its system's root directory (ingesting the corpus takes ~12 minutes).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

from . import report
from .bench_beir import DEFAULT_DIR as BEIR_DIR, present as beir_present
from .common import stop_on_sigterm

#: benchmark modules, in the order they run
MODULES = ("bench_query", "bench_ann", "bench_throughput", "bench_ingest", "bench_sleep", "bench_minilm_ingest",
           "bench_query_embed", "bench_filter", "bench_compact", "bench_documents", "bench_extract", "bench_hybrid", "bench_web",
           "bench_embed_concurrency", "bench_text_query", "bench_deep_sleep")


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(prog="./run.sh bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k vectors only, a few minutes")
    parser.add_argument("--only", help="comma-separated module names (default: all of MODULES)")
    parser.add_argument("--beir", nargs="?", const=BEIR_DIR, type=Path, metavar="DIR",
                        help=f"only the SciFact benchmark, on the BEIR directory DIR (default {BEIR_DIR})")
    parser.add_argument("--store", type=Path, metavar="ROOT",
                        help="with --beir: the system root to keep and reuse (default: a temporary one)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else MODULES
    options: dict[str, dict] = {}
    if args.beir is not None:
        if not beir_present(args.beir):
            print(f"SciFact not found at {args.beir}: skipped")
            return 0
        names = ("bench_beir",)
        options["bench_beir"] = {"beir_dir": args.beir, "store": args.store}
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
            result = module.run(args.quick, **options.get(name, {}))
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
    if rows := report.scaling(results):
        print(report.scaling_markdown(rows))
    for note in notes:
        print(f"note: {note}")
    print(f"whole run {seconds:.0f} s; report: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
