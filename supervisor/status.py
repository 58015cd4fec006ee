"""What the `status` command answers: the supervisor, one row per role, the backups, and
the store's counts. It reads the children's rows and /proc and asks no role anything, so a
status poll never wakes a sleeping role."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import psutil

from roxi_mp.store import Store

if TYPE_CHECKING:
    from .arbiter import Arbiter

#: seconds a status answer reuses store counts (the children cache their smaps readings)
STATUS_CACHE_SECONDS = 1.0


class StoreCounts:
    """The store's counts, read at most once per `max_age` seconds.

    Counting 1M chunks by state takes tens of ms: a client polling status in a loop must
    not turn the supervisor into the busiest process on the machine."""

    def __init__(self, max_age: float = STATUS_CACHE_SECONDS) -> None:
        self.max_age = max_age
        self.counts: dict[str, Any] | None = None
        self.read_at = 0.0

    def get(self, store: Store, now: float) -> dict[str, Any]:
        if self.counts is None or now - self.read_at >= self.max_age:
            self.counts, self.read_at = store.stats().as_dict(), now
        return self.counts


_me: psutil.Process | None = None


def _myself() -> psutil.Process:
    """This process (psutil keeps the CPU times between calls for cpu_percent)."""
    global _me
    if _me is None or _me.pid != os.getpid():
        _me = psutil.Process()
    return _me


def build_status(arbiter: "Arbiter", now: float) -> dict[str, Any]:
    cfg = arbiter.cfg
    stopping = arbiter.shutdown_phase is not None
    me = _myself()
    return {"supervisor": {"pid": os.getpid(), "uptime": round(now - arbiter.started, 1),
                           "state": "stopping" if stopping else "running",
                           "data_dir": str(cfg.data_dir),
                           "rss": me.memory_info().rss, "cpu_percent": me.cpu_percent(None),
                           "cpu_seconds": round(sum(me.cpu_times()[:2]), 2),
                           "web": getattr(arbiter.dashboard, "url", None) if arbiter.dashboard else None},
            "roles": [c.status(now, vectors_dir=cfg.data_dir if c.kind == "query" else None)
                      for c in arbiter.children],
            "backups": arbiter.backups.status(),
            "store": arbiter.store_counts.get(arbiter.store, now)}
