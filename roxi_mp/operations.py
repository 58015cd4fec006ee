"""What an operator runs against the store, as library calls: ingest, remove and list
documents, process to a target, wait for a target, progress, backups and restore.

The `roxi` CLI only parses, calls these and prints; the rules (when a target counts as
reached or can no longer be reached, that processing is paused again on every way out of
`process_until`, that a restore refuses a running system) live here, built on the lifecycle
calls of roxi_mp.service. Waiting loops take their clock and sleep as arguments, so tests
drive them without waiting.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from . import backup as backup_mod
from . import ingest as ingest_mod
from . import service
from .config import Config
from .errors import AlreadyRunning, BadInput, NotFound, NotRunning, RoxiError, TargetUnreachable, Timeout
from .logs import log_path
from .store import Store

Stats = dict[str, Any]
Progress = Callable[[int, int], None]


def ingest(cfg: Config, paths: Iterable[Path | str], *, key: str | None = None, sync: bool = False,
           progress: Progress | None = None) -> ingest_mod.IngestReport:
    """Add or replace .txt/.md/.pdf/.html/.docx files and directories in the store (roxi_mp.ingest: `key`
    for one file, `sync` to delete documents of vanished files under the directories), then
    wake a running system's embedders.

    Refused while a reembed or restore rebuilds the store; `progress(done, total)` counts files.
    """
    paths = list(paths)
    ingest_mod.check_arguments(paths, key=key, sync=sync, max_key_chars=cfg.documents.max_key_chars)
    service.check_store_writable(cfg)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    with Store.open(cfg) as store:
        report = ingest_mod.ingest_paths(store, paths, chunk_words=cfg.store.chunk_words,
                                         chunk_overlap=cfg.store.chunk_overlap,
                                         max_document_bytes=cfg.store.max_document_bytes, key=key, sync=sync,
                                         max_key_chars=cfg.documents.max_key_chars, progress=progress,
                                         extract=cfg.extract)
    if report.added or report.replaced:
        service.notify_ingest(cfg)
    return report


@dataclass
class Removal:
    """What `remove` did: the keys deleted, and the arguments that named no document."""

    removed: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def remove(cfg: Config, targets: Iterable[str]) -> Removal:
    """Delete the documents named by keys or paths (an existing path stands for its resolved
    path, the key ingest gave it; a path that is gone is tried as given, then resolved).
    Every known one is deleted; the unknown ones are listed, not raised, so that one typo
    does not keep the others. A running query server sees each delete at its next query."""
    service.check_store_writable(cfg)
    result = Removal()
    if not cfg.db_path.exists():
        result.unknown.extend(targets)
        return result
    with Store.open(cfg) as store:
        for target in targets:
            for key in _keys_for(target):
                try:
                    store.delete_document(key)
                except NotFound:
                    continue
                result.removed.append(key)
                break
            else:
                result.unknown.append(target)
    return result


def _keys_for(target: str) -> list[str]:
    """The keys an argument of `roxi rm` may stand for, in the order they are tried."""
    resolved = str(Path(target).resolve()) if target.strip() else target
    if os.path.exists(target):
        return [resolved]
    return list(dict.fromkeys([target, resolved]))


def documents(cfg: Config, *, state: str | None = None, after: str = "", limit: int = 100) -> dict[str, Any]:
    """A page of at most `limit` keys' documents in key order (Store.documents) and `after`,
    the key to ask the next page after (None on the last page). The versions of one key
    (live and pending) stay on one page. No store yet: an empty page, and none is created."""
    limit = max(1, min(limit, cfg.documents.list_max))
    if not cfg.db_path.exists():
        return {"documents": [], "after": None}
    with Store.open(cfg) as store:
        rows = store.documents(state=state, after=after, limit=limit + 1)  # limit + 1 keys
    keys = list(dict.fromkeys(r["key"] for r in rows))
    if len(keys) <= limit:
        return {"documents": rows, "after": None}
    page = [r for r in rows if r["key"] != keys[-1]]
    return {"documents": page, "after": page[-1]["key"]}


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
    """Store counts plus up to `failures_shown` failed chunks and the indexer's `compaction`
    report (None when not running); with a target, also `target` and whether it is `reached`."""
    stats = service.store_stats(cfg)
    report = {**stats, "failures": service.failures(cfg, limit=failures_shown) if stats["failed"] else [],
              "compaction": compaction_state(cfg)}
    if target is not None:
        report.update(target=target, reached=target_reached(stats, target))
    return report


def compaction_state(cfg: Config) -> dict[str, Any] | None:
    """The indexer's compaction report from its last heartbeat (running, last,
    reclaimable_bytes, refused, count), through the supervisor's status, which wakes
    nothing; None when the system is not running or the indexer reports none."""
    if not service.is_running(cfg):
        return None
    with contextlib.suppress(RoxiError):  # not answering (starting, stopping): counts alone
        for row in service.control(cfg, "status", timeout=2.0).get("roles", []):
            if row.get("role") == "indexer" and isinstance(row.get("compaction"), dict):
                return row["compaction"]
    return None


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
