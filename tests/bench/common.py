"""Shared pieces of the benchmarks: a system in a temporary directory, machine facts, output.

Benchmarks run the real supervisor and roles, like the integration tests, but report
figures instead of asserting them (except where an issue states a bound, which they check
and print as pass/fail). Stores are filled through the durable commit path
(tests.corpus.populate: append, fsync, one SQLite transaction per batch).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import faiss
import numpy as np
import psutil
import zmq

from roxi_mp import config as config_mod

from ..conftest import TEST_DEFAULTS, System, write_toml

OUT_DIR = Path(__file__).resolve().parent / "out"
MB = 2**20


#: what every benchmarked system runs with, over TEST_DEFAULTS: no scheduled or milestone
#: backup copying the store in the middle of a measurement (a milestone fires as soon as a
#: populated store is 100 % indexed)
BENCH_DEFAULTS: dict[str, Any] = {"backup__milestones": False, "backup__interval_seconds": 0.0}


def make_system(root: Path, **overrides: Any) -> System:
    settings = {**TEST_DEFAULTS, **BENCH_DEFAULTS, **overrides}
    conf = write_toml(root / "roxi.toml", settings)
    cfg = config_mod.load(conf, data_dir=root / "data", env={})
    return System(cfg)


def temp_root(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"roxi-bench-{name}-"))


def stop_on_sigterm() -> None:
    """Make SIGTERM (`kill`, `timeout`) raise SystemExit, so every `with bench_system(...)`
    and `finally` stops its system: by default Python dies on it without cleaning up, and
    the supervisor it started (a daemon, as it should be) would keep running."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def bench_system(name: str, **overrides: Any) -> Iterator[System]:
    """A not yet started System in a temporary directory, stopped and removed afterwards."""
    root = temp_root(name)
    s = make_system(root, **overrides)
    try:
        yield s
    finally:
        s.stop()
        s.kill_everything()
        shutil.rmtree(root, ignore_errors=True)


def machine() -> dict[str, Any]:
    mem = psutil.virtual_memory()
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
            "platform": platform.platform(), "cpus": psutil.cpu_count(), "memory_gb": round(mem.total / 2**30, 1),
            "faiss": faiss.__version__, "numpy": np.__version__, "pyzmq": zmq.__version__}


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def evict_page_cache(path: Path) -> None:
    """Drop a file's clean pages from the page cache (no root needed, unlike drop_caches)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_results(name: str, data: dict[str, Any], markdown: str) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = OUT_DIR / f"{name}-{stamp}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    (OUT_DIR / f"{name}-{stamp}.md").write_text(markdown)
    return path


def table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
