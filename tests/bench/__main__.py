"""`./run.sh bench [--quick]`: run the benchmarks one after another and print their tables.

--quick keeps to small sizes (a few minutes); the full run covers 1M vectors. Each
benchmark also writes JSON and Markdown into tests/bench/out/. Run them on a quiet
machine, from a checkout nobody edits meanwhile (the systems they start import the code
afresh).
"""

from __future__ import annotations

import argparse
import sys

from . import bench_minilm_ingest, bench_query, bench_sleep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./run.sh bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    args = parser.parse_args(argv)
    if args.quick:
        runs = [(bench_query, ["--sizes", "10000,100000", "--queries", "100"]),
                (bench_sleep, ["--sizes", "10000,100000", "--sleep-seconds", "10"]),
                (bench_minilm_ingest, ["--chunks", "64", "--repeats", "1"])]
    else:
        runs = [(bench_query, ["--sizes", "10000,100000,1000000"]),
                (bench_sleep, []),
                (bench_minilm_ingest, [])]
    for module, module_args in runs:
        print(f"# {module.__name__.rsplit('.', 1)[-1]} {' '.join(module_args)}", flush=True)
        code = module.main(module_args)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
