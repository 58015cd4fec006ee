"""What an operator runs against the store, as library calls: ingest, process to a target,
wait for a target, progress, backups and restore.

The `roxi` CLI only parses, calls these and prints; the rules (when a target counts as
reached or can no longer be reached, that processing is paused again on every way out of
`process_until`, that a restore refuses a running system) live here, built on the lifecycle
calls of roxi_mp.service. Waiting loops take their clock and sleep as arguments, so tests
drive them without waiting.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from . import backup as backup_mod
from . import ingest as ingest_mod
from . import service
from .config import Config
from .errors import AlreadyRunning, BadInput, NotRunning, TargetUnreachable, Timeout
from .logs import log_path
from .store import Store

Stats = dict[str, Any]
Progress = Callable[[int, int], None]


def ingest(cfg: Config, paths: Iterable[Path | str], *, progress: Progress | None = None) -> ingest_mod.IngestReport:
    """Add .txt/.md files and directories to the store, then wake a running system's embedders.

    Refused while a reembed or restore rebuilds the store; `progress(done, total)` counts files.
    """
    service.check_store_writable(cfg)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    with Store.open(cfg) as store:
        report = ingest_mod.ingest_paths(store, paths, chunk_words=cfg.store.chunk_words,
                                         chunk_overlap=cfg.store.chunk_overlap,
                                         max_document_bytes=cfg.store.max_document_bytes, progress=progress)
    if report.added:
        service.notify_ingest(cfg)
    return report


def target_reached(stats: Stats, target: float) -> bool:
    """At least `target` % of the chunks indexed; never true of a store with no chunks."""
    return stats["chunks"] > 0 and stats["percent"] >= target


def process_until(cfg: Config, target: float, *, timeout: float | None = None,
                  on_progress: Callable[[Stats], None] | None = None,
                  sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], float] = time.monotonic) -> Stats:
    """Resume processing until `target` % of the chunks are indexed, then pause again.

    `on_progress(stats)` sees every reading. Processing is paused on every way out: the
    target reached (returns the counts read after the pause: batches in flight then still
    commit), TargetUnreachable (nothing pending or leased is left), Timeout, Ctrl-C.
    """
    if not service.is_running(cfg):
        raise NotRunning(f"not running on {cfg.data_dir}: `roxi start` first")
    if not service.store_stats(cfg)["chunks"]:
        raise BadInput("nothing to process: the store has no chunks (`roxi ingest` first)")
    service.set_paused(cfg, False)
    deadline = None if timeout is None else clock() + timeout
    try:
        while True:
            stats = service.store_stats(cfg)
            if on_progress is not None:
                on_progress(stats)
            if target_reached(stats, target):
                break
            if not stats["pending"] and not stats["leased"]:
                raise TargetUnreachable(f"target {target:g} % cannot be reached: {stats['failed']} chunks failed "
                                        f"(see `roxi progress`, `roxi retry-failed`)")
            if deadline is not None and clock() > deadline:
                raise Timeout(f"{stats['percent']:.1f} % after {timeout:g} s, below {target:g} %")
            sleep(service.POLL)
    finally:
        service.set_paused(cfg, True)
    return service.store_stats(cfg)


def wait_for(cfg: Config, target: float, *, interval: float, sleep: Callable[[float], None] = time.sleep) -> Stats:
    """Block until `target` % of the chunks are indexed, reading every `interval` seconds."""
    while not target_reached(stats := service.store_stats(cfg), target):
        sleep(interval)
    return stats


def run_hook(command: str, stats: Stats) -> int:
    """Run a shell command with ROXI_PERCENT, ROXI_INDEXED, ROXI_CHUNKS and ROXI_FAILED set
    from `stats`; returns its exit code."""
    env = {**os.environ, "ROXI_PERCENT": f"{stats['percent']:.2f}", "ROXI_INDEXED": str(stats["indexed"]),
           "ROXI_CHUNKS": str(stats["chunks"]), "ROXI_FAILED": str(stats["failed"])}
    return subprocess.run(command, shell=True, env=env).returncode


def progress_report(cfg: Config, *, target: float | None = None, failures_shown: int = 5) -> Stats:
    """Store counts plus up to `failures_shown` failed chunks; with a target, also `target`
    and whether it is `reached`."""
    stats = service.store_stats(cfg)
    report = {**stats, "failures": service.failures(cfg, limit=failures_shown) if stats["failed"] else []}
    if target is not None:
        report.update(target=target, reached=target_reached(stats, target))
    return report


def role_log(cfg: Config, role: str) -> Path:
    """The log file of a role (supervisor, indexer, query, embedder-1, ...); BadInput names the known ones."""
    path = log_path(cfg.log_dir, role)
    if not path.exists():
        known = sorted(p.stem for p in cfg.log_dir.glob("*.log")) if cfg.log_dir.exists() else []
        raise BadInput(f"no log for {role!r} in {cfg.log_dir} (known: {', '.join(known) or 'none'})")
    return path


def find_backup(cfg: Config, name: str) -> Path:
    """A backup named by its directory, or by its name in backup.dir."""
    for candidate in (Path(name), cfg.backup_dir / name):
        if candidate.is_dir():
            return candidate
    raise BadInput(f"no backup {name!r} (a directory, or a name in {cfg.backup_dir}; see `roxi backup list`)")


def backup(cfg: Config, *, kind: str = "manual", progress: Progress | None = None) -> tuple[Path, list[Path]]:
    """One backup into backup.dir, then a prune to backup.keep: `roxi backup create` and the
    supervisor's backup job both run this. Returns the new backup and the removed ones."""
    path = backup_mod.create(cfg, cfg.backup_dir, kind=kind, progress=progress)
    return path, backup_mod.prune(cfg.backup_dir, keep=cfg.backup.keep)


def restore(cfg: Config, path: Path, *, stop_first: bool = False,
            progress: Progress | None = None) -> backup_mod.Manifest:
    """Replace the store by a backup (roxi_mp.backup.restore). A running system is refused
    with AlreadyRunning, or with `stop_first` stopped before anything is touched."""
    if service.is_running(cfg):
        if not stop_first:
            raise AlreadyRunning(f"roxi is running on {cfg.data_dir}: `roxi stop` first, or pass --stop")
        service.stop(cfg)
    return backup_mod.restore(cfg, path, progress=progress)
