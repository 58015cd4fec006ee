"""`roxi`: the admin command line. Thin: each command opens the store or a client, calls
one library function, and prints. Every RoxiError becomes one line on stderr and the exit
code documented in roxi_mp.errors; click's own usage errors exit 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from . import config as config_mod
from . import ingest as ingest_mod
from . import service
from .client import QueryClient
from .errors import TARGET_NOT_REACHED, AlreadyRunning, BadInput, NotRunning, RoxiError, Timeout
from .logs import follow as follow_log
from .logs import log_path, tail
from .store import Store


class RoxiGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RoxiError as exc:
            click.echo(f"roxi: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=RoxiGroup)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="ROXI_DATA_DIR",
              help="Data directory (default ./data, or $ROXI_DATA_DIR).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              envvar="ROXI_CONFIG", help="Configuration file (default conf/roxi.toml).")
@click.pass_context
def main(ctx: click.Context, data_dir: Path | None, config_path: Path | None) -> None:
    """roxi-mp: background embedding and vector search."""
    ctx.obj = {"data_dir": data_dir, "config_path": config_path}


def _cfg(ctx: click.Context) -> config_mod.Config:
    obj = ctx.find_root().obj
    if "cfg" not in obj:
        obj["cfg"] = config_mod.load(obj["config_path"], data_dir=obj["data_dir"])
    return obj["cfg"]


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


# --- lifecycle ---------------------------------------------------------------------
@main.command()
@click.option("--foreground", is_flag=True, help="Run the supervisor in this process until stopped.")
@click.pass_context
def start(ctx: click.Context, foreground: bool) -> None:
    """Start the supervisor and every role (exit 4 if one already runs here)."""
    cfg = _cfg(ctx)
    if foreground:
        from supervisor.__main__ import run_foreground
        ctx.exit(run_foreground(cfg))
    status = service.start_background(cfg)
    click.echo(f"roxi started (supervisor pid {status['supervisor']['pid']}, data {cfg.data_dir})")
    _print_roles(status)


@main.command()
@click.argument("role", required=False)
@click.option("--timeout", type=float, default=None, help="Seconds to wait for the stop.")
@click.pass_context
def stop(ctx: click.Context, role: str | None, timeout: float | None) -> None:
    """Stop every role in order, then the supervisor; or only ROLE, which then stays
    stopped until `roxi restart ROLE` (exit 3 if not running)."""
    cfg = _cfg(ctx)
    if role:
        names = service.stop_role(cfg, role, timeout=timeout)
        click.echo(f"stopped {', '.join(names)} (stays stopped until `roxi restart {role}`)")
        return
    pid = service.stop(cfg, timeout=timeout)
    click.echo(f"roxi stopped (supervisor pid {pid})")


@main.command()
@click.argument("role")
@click.option("--timeout", type=float, default=None, help="Seconds to wait until it runs.")
@click.pass_context
def restart(ctx: click.Context, role: str, timeout: float | None) -> None:
    """Restart ROLE now (embedder, indexer, query, or a name like embedder-2), clearing
    `failed` and a manual stop."""
    cfg = _cfg(ctx)
    names = service.restart_role(cfg, role, timeout=timeout)
    click.echo(f"restarted {', '.join(names)}")


@main.command()
@click.argument("role", required=False)
@click.pass_context
def sleep(ctx: click.Context, role: str | None) -> None:
    """Deep sleep now (all roles, or ROLE): the query server unmaps the vectors and drops
    its caches, embedders unload their model. The next query wakes it."""
    names = service.sleep_roles(_cfg(ctx), role, wake=False)
    click.echo(f"asleep: {', '.join(names)}")


@main.command()
@click.argument("role", required=False)
@click.pass_context
def wake(ctx: click.Context, role: str | None) -> None:
    """Wake now (prewarm): the query server maps the vectors, embedders load their model."""
    names = service.sleep_roles(_cfg(ctx), role, wake=True)
    click.echo(f"awake: {', '.join(names)}")


@main.command()
@click.argument("role")
@click.option("-n", "lines", type=click.IntRange(0, 100_000), default=50, show_default=True,
              help="Lines to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C ends).")
@click.pass_context
def logs(ctx: click.Context, role: str, lines: int, follow: bool) -> None:
    """Show a role's log (data/logs/ROLE.log): supervisor, indexer, query, embedder-1, ..."""
    cfg = _cfg(ctx)
    path = log_path(cfg.log_dir, role)
    if not path.exists():
        known = sorted(p.stem for p in cfg.log_dir.glob("*.log")) if cfg.log_dir.exists() else []
        raise BadInput(f"no log for {role!r} in {cfg.log_dir} (known: {', '.join(known) or 'none'})")
    for line in tail(path, lines):
        click.echo(line)
    if follow:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how -f ends
            for line in follow_log(path):
                click.echo(line)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Roles and store counts; never wakes a sleeping role (exit 3 if not running)."""
    cfg = _cfg(ctx)
    data = service.status(cfg)
    if as_json:
        _echo_json(data)
    else:
        sup = data.get("supervisor")
        click.echo(f"supervisor: {'pid %s, up %ss' % (sup['pid'], sup['uptime']) if sup else 'not running'}")
        _print_roles(data)
        _print_store(data["store"])
    if not data["running"]:
        ctx.exit(3)


def _print_roles(data: dict) -> None:
    for r in data.get("roles", []):
        rss = f"{r['rss'] / 2**20:.1f} MB" if r.get("rss") else "-"
        mapped = f" mapped {r['mapped_rss'] / 2**20:.1f}/{r['mapped_bytes'] / 2**20:.1f} MB" \
            if r.get("mapped_bytes") is not None else ""
        cpu = f"{r['cpu_percent']:.0f}%" if r.get("cpu_percent") is not None else "-"
        beat = f"{r['heartbeat_age']:.1f}s" if r.get("heartbeat_age") is not None else "-"
        up = f"{r['uptime']:.0f}s" if r.get("uptime") is not None else "-"
        click.echo(f"  {r['name']:<12} {r['state']:<9} pid {r['pid'] or '-':<8} up {up:<7} rss {rss:<10} "
                   f"cpu {cpu:<5} beat {beat:<6} restarts {r['restarts']}{mapped}")
        backoff = max(r.get("backoff_seconds") or 0, (r.get("backend") or {}).get("backoff_seconds") or 0)
        if backoff:
            click.echo(f"      backing off {backoff:.1f} s ({(r.get('backend') or {}).get('last_error') or 'service down'})")
        if r.get("last_error"):
            click.echo(f"      commits failing ({r.get('commit_failures', 0)} attempts, retrying): {r['last_error']}")
        if r.get("index") not in (None, "exact") and r.get("ann_rows") is not None and r["name"] == "indexer":
            building = ", building" if r.get("building") else ""
            click.echo(f"      {r['index']} index covers {r['ann_rows']:,} rows{building}"
                       f" ({r.get('builds', 0)} builds, {r.get('build_failures', 0)} failures)")
        if r["state"] == "failed":
            click.echo(f"      exit code {r.get('exit_code')}; last log lines:")
            for line in r.get("log_tail", [])[-5:]:
                click.echo(f"      | {line}")


def _rate_eta(stats: dict) -> str:
    rate, eta = stats.get("rate_per_second") or 0.0, stats.get("eta_seconds")
    if eta is None:
        return f"{rate:.1f} chunks/s, no ETA"
    return f"{rate:.1f} chunks/s, ETA {_duration(eta)}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _print_store(s: dict) -> None:
    click.echo(f"store: {s['documents']} documents, {s['chunks']} chunks, {s['indexed']} indexed "
               f"({s['percent']:.1f} %), {s['pending'] + s['leased']} pending, {s['failed']} failed; "
               f"{_rate_eta(s)}{'; PROCESSING PAUSED (roxi resume)' if s.get('paused') else ''}")


# --- data --------------------------------------------------------------------------
@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.pass_context
def ingest(ctx: click.Context, paths: tuple[Path, ...], as_json: bool) -> None:
    """Add .txt/.md files and directories (recursive) to the store.

    Identical documents are skipped; unreadable, non-UTF-8 or missing files are reported
    and skipped (exit 5 if any), the rest is ingested.
    """
    cfg = _cfg(ctx)
    service.check_store_writable(cfg)
    report = ingest_mod.IngestReport()
    files = ingest_mod.expand(paths, report)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    with Store.open(cfg) as store:
        show_bar = len(files) > 20 and not as_json and sys.stderr.isatty()
        with click.progressbar(files, label="ingesting", file=sys.stderr, show_pos=True) if show_bar \
                else _plain(files) as items:
            for path in items:
                ingest_mod.ingest_file(store, path, report, chunk_words=cfg.store.chunk_words,
                                       chunk_overlap=cfg.store.chunk_overlap,
                                       max_document_bytes=cfg.store.max_document_bytes)
    if report.added:
        service.notify_ingest(cfg)
    if as_json:
        _echo_json(report.as_dict())
    else:
        click.echo(f"added {report.added} documents ({report.chunks} chunks), {report.duplicates} "
                   f"duplicates, {report.empty} empty, {len(report.errors)} skipped")
        for path, reason in report.errors:
            click.echo(f"skipped {path}: {reason}", err=True)
    if report.errors:
        ctx.exit(BadInput.exit_code)


class _plain:
    def __init__(self, items: list) -> None:
        self.items = items

    def __enter__(self) -> list:
        return self.items

    def __exit__(self, *exc: object) -> None:
        return None


@main.command()
@click.argument("text")
@click.option("-k", "k", type=int, default=None, help="Number of hits (default query.default_k).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def query(ctx: click.Context, text: str, k: int | None, as_json: bool) -> None:
    """Semantic search: rank, score, document title and chunk text of the best chunks."""
    cfg = _cfg(ctx)
    if not text.strip():
        raise BadInput("query text is empty")
    with QueryClient.for_config(cfg) as client:
        started = time.perf_counter()
        hits = client.query(text, k=cfg.query.default_k if k is None else k)
        took = (time.perf_counter() - started) * 1000
    if as_json:
        _echo_json({"query": text, "hits": hits, "took_ms": round(took, 3)})
        return
    if not hits:
        click.echo("no results (is anything indexed yet? see `roxi progress`)")
    for h in hits:
        click.echo(f"{h['rank']:>3}. {h['score']:.4f}  {h['title']}  [{Path(h['source']).name} #{h['position']}]")
        snippet = h.get("text", "")
        click.echo(f"     {snippet[:240]}{'...' if len(snippet) > 240 else ''}")


@main.command()
@click.option("--model", "backend", required=True, type=click.Choice(["minilm", "hashing", "http"]),
              help="Backend to embed with (configured in its section of the config file).")
@click.pass_context
def reembed(ctx: click.Context, backend: str) -> None:
    """Rebuild every vector with another model, the system stopped. The current store stays
    as it is until the new one is complete, then is swapped out (kept in data/previous/).
    Interrupted, it resumes on the next run. Afterwards set embedder.backend to the new
    backend before `roxi start`."""
    from .reembed import reembed as run_reembed

    cfg = _cfg(ctx)
    bar, progress = _byte_bar(f"re-embedding with {backend}")
    with bar:
        result = run_reembed(cfg, backend, progress=progress)
    click.echo(f"store now uses {result.model_id} (dim {result.dim}): {result.chunks} chunks "
               f"({result.embedded} embedded in this run); previous store in {cfg.data_dir / 'previous'}")
    if cfg.embedder.backend != backend:
        click.echo(f"set embedder.backend = \"{backend}\" in the config (or ROXI_EMBEDDER_BACKEND={backend}) "
                   f"before `roxi start`", err=True)


@main.command()
@click.pass_context
def pause(ctx: click.Context) -> None:
    """Stop claiming new work; batches in flight finish and commit. Survives restarts;
    queries keep working."""
    service.set_paused(_cfg(ctx), True)
    click.echo("processing paused")


@main.command()
@click.pass_context
def resume(ctx: click.Context) -> None:
    """Resume processing after `roxi pause`."""
    service.set_paused(_cfg(ctx), False)
    click.echo("processing resumed")


@main.command()
@click.option("--until", "target", type=click.FloatRange(0, 100, min_open=True), required=True,
              help="Percentage of chunks indexed at which processing pauses again.")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds (exit 8).")
@click.pass_context
def process(ctx: click.Context, target: float, timeout: float | None) -> None:
    """Resume processing, show progress, and pause again once PCT % are indexed.
    Ctrl-C pauses processing too; what is in flight still commits (exit 130)."""
    cfg = _cfg(ctx)
    if not service.is_running(cfg):
        raise NotRunning(f"not running on {cfg.data_dir}: `roxi start` first")
    stats = service.store_stats(cfg)
    if not stats["chunks"]:
        raise BadInput("nothing to process: the store has no chunks (`roxi ingest` first)")
    service.set_paused(cfg, False)
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = _bar(f"indexing to {target:g} %", show_pos=True, item_show_func=lambda _: _rate_eta(stats))
    try:
        with bar:
            while True:
                stats = service.store_stats(cfg)
                bar.length = stats["chunks"]
                bar.update(stats["indexed"] - bar.pos)
                if stats["percent"] >= target:
                    break
                if not stats["pending"] and not stats["leased"]:
                    raise RoxiError(f"target {target:g} % cannot be reached: {stats['failed']} chunks failed "
                                    f"(see `roxi progress`, `roxi retry-failed`)")
                if deadline is not None and time.monotonic() > deadline:
                    raise Timeout(f"{stats['percent']:.1f} % after {timeout:g} s, below {target:g} %")
                time.sleep(0.1)
    except KeyboardInterrupt:
        service.set_paused(cfg, True)
        click.echo(f"interrupted at {service.store_stats(cfg)['percent']:.1f} %: processing paused", err=True)
        ctx.exit(130)
    except RoxiError:
        service.set_paused(cfg, True)
        raise
    service.set_paused(cfg, True)
    final = service.store_stats(cfg)  # batches in flight when we paused still commit
    click.echo(f"reached {final['percent']:.1f} % ({final['indexed']}/{final['chunks']} chunks): processing "
               f"paused; `roxi resume` or `roxi process --until 100` to go on")


@main.command()
@click.option("--notify-at", "target", type=click.FloatRange(0, 100), required=True,
              help="Percentage of chunks indexed to wait for.")
@click.option("--exec", "command", default=None,
              help="Shell command to run then, with ROXI_PERCENT, ROXI_INDEXED, ROXI_CHUNKS, ROXI_FAILED set.")
@click.option("--interval", type=click.FloatRange(0.05, 3600), default=2.0, show_default=True,
              help="Seconds between checks.")
@click.pass_context
def watch(ctx: click.Context, target: float, command: str | None, interval: float) -> None:
    """Wait until PCT % of chunks are indexed, then print and/or run a command. Exits 0, or
    the command's exit code if it fails."""
    cfg = _cfg(ctx)
    while True:
        stats = service.store_stats(cfg)
        if stats["chunks"] and stats["percent"] >= target:
            break
        time.sleep(interval)
    click.echo(f"reached {stats['percent']:.1f} % ({stats['indexed']}/{stats['chunks']} chunks, "
               f"{stats['failed']} failed)")
    if command:
        env = {**os.environ, "ROXI_PERCENT": f"{stats['percent']:.2f}", "ROXI_INDEXED": str(stats["indexed"]),
               "ROXI_CHUNKS": str(stats["chunks"]), "ROXI_FAILED": str(stats["failed"])}
        code = subprocess.run(command, shell=True, env=env).returncode
        if code:
            click.echo(f"roxi: --exec command exited with {code}", err=True)
            ctx.exit(code)


@main.group()
def keys() -> None:
    """CURVE keys for a tcp:// query endpoint (network.query_endpoint)."""


@keys.command("generate")
@click.option("--client", "client", default="client", show_default=True,
              help="Name of the client key pair to create.")
@click.pass_context
def keys_generate(ctx: click.Context, client: str) -> None:
    """Create the server key pair (once) and a client key pair allowed to connect."""
    from . import keys as keys_mod

    cfg = _cfg(ctx)
    made = keys_mod.generate(cfg, client)
    if "server" in made:
        click.echo(f"server key pair: {made['server']} (+ .key_secret)")
    click.echo(f"client {client!r}: give the client {made['client_secret']} and {made['server_public']}")
    click.echo(f"allowed: {made['allowed']} (a running query server admits it after `roxi restart query`)")


@main.group()
def backup() -> None:
    """Consistent online backups: create, list, verify, prune (and `roxi restore`)."""


class _NoBar:
    """Stands in for a progress bar where stderr is no terminal: scripts get one-line errors."""

    pos = 0
    length = 1

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        self.pos += n


def _bar(label: str, **kwargs):
    if not sys.stderr.isatty():
        return _NoBar()
    return click.progressbar(length=1, label=label, file=sys.stderr, **kwargs)


def _byte_bar(label: str):
    bar = _bar(label)

    def progress(done: int, total: int) -> None:
        bar.length = max(total, 1)
        bar.update(done - bar.pos)

    return bar, progress


def _backup_path(cfg: config_mod.Config, name: str) -> Path:
    for candidate in (Path(name), cfg.backup_dir / name):
        if candidate.is_dir():
            return candidate
    raise BadInput(f"no backup {name!r} (a directory, or a name in {cfg.backup_dir}; see `roxi backup list`)")


@backup.command("create")
@click.pass_context
def backup_create(ctx: click.Context) -> None:
    """Snapshot the store now, also while ingest runs (SQLite online backup + committed rows)."""
    from . import backup as backup_mod

    cfg = _cfg(ctx)
    bar, progress = _byte_bar("backing up")
    with bar:
        path = backup_mod.create(cfg, cfg.backup_dir, kind="manual", progress=progress)
    removed = backup_mod.prune(cfg.backup_dir, keep=cfg.backup.keep)
    click.echo(f"backup {path}" + (f" (pruned {len(removed)} old)" if removed else ""))


@backup.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def backup_list(ctx: click.Context, as_json: bool) -> None:
    """Backups, oldest first: name, created, kind, rows, chunks, size."""
    from . import backup as backup_mod

    cfg = _cfg(ctx)
    infos = backup_mod.list_backups(cfg.backup_dir)
    if as_json:
        _echo_json([{"path": str(i.path), "bytes": i.bytes, **json.loads(i.manifest.to_json())} for i in infos])
        return
    if not infos:
        click.echo(f"no backups in {cfg.backup_dir}")
    for i in infos:
        m = i.manifest
        click.echo(f"{i.path.name}  {m.created}  {m.kind:<9} rows {m.rows:<9} chunks {m.chunks:<9} "
                   f"{i.bytes / 2**20:.1f} MB  {m.model_id or '-'}")


@backup.command("verify")
@click.argument("name")
@click.pass_context
def backup_verify(ctx: click.Context, name: str) -> None:
    """Check checksums, SQLite integrity, and that rows and chunk states agree (exit 7 if not)."""
    from . import backup as backup_mod

    path = _backup_path(_cfg(ctx), name)
    bar, progress = _byte_bar("verifying")
    with bar:
        m = backup_mod.verify(path, progress=progress)
    click.echo(f"ok: {path.name} ({m.rows} rows, {m.chunks} chunks, {m.model_id or 'no model'})")


@backup.command("prune")
@click.option("--keep", type=click.IntRange(1), default=None, help="Backups to keep (default backup.keep).")
@click.pass_context
def backup_prune(ctx: click.Context, keep: int | None) -> None:
    """Delete all but the newest backups."""
    from . import backup as backup_mod

    cfg = _cfg(ctx)
    removed = backup_mod.prune(cfg.backup_dir, keep=keep or cfg.backup.keep)
    click.echo(f"removed {len(removed)} backups" + "".join(f"\n  {p.name}" for p in removed))


@main.command()
@click.argument("name")
@click.option("--stop", "stop_first", is_flag=True, help="Stop the running system first.")
@click.pass_context
def restore(ctx: click.Context, name: str, stop_first: bool) -> None:
    """Replace the store by a backup: verified first, swapped in atomically (the current
    files are kept in data/previous/). Refused while the system runs, unless --stop."""
    from . import backup as backup_mod

    cfg = _cfg(ctx)
    path = _backup_path(cfg, name)
    if service.is_running(cfg):
        if not stop_first:
            raise AlreadyRunning(f"roxi is running on {cfg.data_dir}: `roxi stop` first, or pass --stop")
        service.stop(cfg)
    bar, progress = _byte_bar("restoring")
    with bar:
        m = backup_mod.restore(cfg, path, progress=progress)
    click.echo(f"restored {path.name} ({m.rows} rows, {m.chunks} chunks) into {cfg.data_dir}; "
               f"previous store in {cfg.data_dir / 'previous'}; `roxi start` to run it")


@main.command("retry-failed")
@click.pass_context
def retry_failed(ctx: click.Context) -> None:
    """Put chunks marked failed back to pending, with fresh attempts."""
    count = service.retry_failed(_cfg(ctx))
    click.echo(f"{count} failed chunks back to pending")


@main.command()
@click.option("--target", type=click.FloatRange(0, 100), default=None,
              help="Exit 0 if at least PCT % of chunks are indexed, else 1.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def progress(ctx: click.Context, target: float | None, as_json: bool) -> None:
    """Indexed / total chunks (failed shown apart); with --target, exit 1 until reached."""
    cfg = _cfg(ctx)
    stats = service.store_stats(cfg)
    reached = target is None or (stats["chunks"] > 0 and stats["percent"] >= target)
    failed = service.failures(cfg, limit=5) if stats["failed"] else []
    if as_json:
        _echo_json({**stats, "failures": failed,
                    **({"target": target, "reached": reached} if target is not None else {})})
    else:
        click.echo(f"{stats['indexed']}/{stats['chunks']} chunks indexed ({stats['percent']:.1f} %), "
                   f"{stats['failed']} failed; {_rate_eta(stats)}{' (paused)' if stats['paused'] else ''}")
        for f in failed:
            click.echo(f"  failed chunk {f['chunk_id']} of {Path(f['source']).name}: {f['error']}")
        if stats["failed"]:
            click.echo("  (`roxi retry-failed` puts them back)")
    if not reached:
        ctx.exit(TARGET_NOT_REACHED)


if __name__ == "__main__":  # pragma: no cover
    main()
