"""`roxi`: the admin command line. Thin: each command opens the store or a client, calls
one library function, and prints. Every RoxiError becomes one line on stderr and the exit
code documented in roxi_mp.errors; click's own usage errors exit 2.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import click

from . import backup as backup_mod
from . import config as config_mod
from . import keys as keys_mod
from . import operations, service
from .cli_format import (Bar, Weights, echo_json, print_backups, print_compact, print_coverage, print_documents,
                         print_hits, print_ingest, print_progress, print_roles, print_status, rate_eta)
from .client import QueryClient
from .embedders import BACKENDS
from .errors import NOT_RUNNING, TARGET_NOT_REACHED, BadInput, NotFound, RoxiError
from .fusion import METHODS, MODES
from .logs import follow as follow_log
from .logs import tail
from .reembed import reembed as run_reembed


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
    if status["supervisor"].get("web"):
        click.echo(f"resources page: {status['supervisor']['web']}")
    print_roles(status)


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
    path = operations.role_log(_cfg(ctx), role)
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
    data = service.status(_cfg(ctx))
    if as_json:
        echo_json(data)
    else:
        print_status(data)
    if not data["running"]:
        ctx.exit(NOT_RUNNING)


# --- data --------------------------------------------------------------------------
@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--key", default=None, help="Store the one FILE given under this key instead of its path.")
@click.option("--sync", is_flag=True,
              help="Also delete the documents under each directory given whose files are gone.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.pass_context
def ingest(ctx: click.Context, paths: tuple[Path, ...], key: str | None, sync: bool, as_json: bool) -> None:
    """Add .txt, .md, .pdf, .html, .htm and .docx files and directories (recursive) to the
    store, each file a document keyed by its resolved path.

    An unchanged file is skipped; a changed one replaces its old version, which answers
    until the new one is indexed; a renamed file leaves no copy under its old path.
    Unreadable, non-UTF-8 or missing files, files whose content is not what their name
    says, and PDF/HTML/Word files that cannot be read within the [extract] limits are
    reported and skipped (exit 5 if any), the rest is ingested.
    """
    bar = Bar("ingesting", lazy=True, min_total=20, enabled=not as_json, show_pos=True)
    with bar:
        report = operations.ingest(_cfg(ctx), paths, key=key, sync=sync, progress=bar)
    if as_json:
        echo_json(report.as_dict())
    else:
        print_ingest(report)
    if report.errors:
        ctx.exit(BadInput.exit_code)


@main.command("rm")
@click.argument("targets", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, targets: tuple[str, ...]) -> None:
    """Delete documents by KEY, or by PATH (an existing file stands for its resolved path).
    From the moment this returns, no query answers from them. Unknown keys exit 5, after
    the others are deleted."""
    result = operations.remove(_cfg(ctx), targets)
    for key in result.removed:
        click.echo(f"removed {key}")
    if result.unknown:
        raise NotFound(f"no document with key {', '.join(map(repr, result.unknown))}")


@main.command()
@click.option("--state", type=click.Choice(["live", "pending", "failed"]), default=None,
              help="Only live versions, pending replacements, or versions with failed chunks.")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True,
              help="Documents per page (at most documents.list_max).")
@click.option("--after", default="", help="Start after this key (the next page).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def docs(ctx: click.Context, state: str | None, limit: int, after: str, as_json: bool) -> None:
    """Documents in key order: key, status (a pending version shows as replacing), version,
    chunks indexed/total, failed chunks."""
    page = operations.documents(_cfg(ctx), state=state, after=after, limit=limit)
    if as_json:
        echo_json(page)
    else:
        print_documents(page)


@main.command()
@click.pass_context
def compact(ctx: click.Context) -> None:
    """Compact the store now: rows of deleted and replaced versions are given back, while
    queries and ingest go on (exit 3 if not running, 9 if refused)."""
    reply = service.compact(_cfg(ctx))
    print_compact(reply)


@main.command()
@click.argument("text")
@click.option("-k", "k", type=int, default=None, help="Number of hits (default query.default_k).")
@click.option("--mode", type=click.Choice(MODES), default=None,
              help="hybrid (words and meaning fused), dense (meaning) or lexical (words) (default query.mode).")
@click.option("--fusion", type=click.Choice(METHODS), default=None,
              help="How hybrid fuses the two rankings (default query.fusion).")
@click.option("--weights", type=Weights(), default=None, metavar="DENSE,LEXICAL",
              help="Weights of the dense and lexical legs in hybrid, each in [0, 1], e.g. 0.5,1 "
                   "(default query.dense_weight, query.lexical_weight).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def query(ctx: click.Context, text: str, k: int | None, mode: str | None, fusion: str | None,
          weights: dict[str, float] | None, as_json: bool) -> None:
    """Search: rank, score, document title and chunk text of the best chunks, which leg
    found each (dense, words), and how much of the library is embedded (a warning below 50 %)."""
    cfg = _cfg(ctx)
    if not text.strip():
        raise BadInput("query text is empty")
    with QueryClient.for_config(cfg) as client:
        started = time.perf_counter()
        reply = client.search(text, k=cfg.query.default_k if k is None else k, mode=mode, fusion=fusion,
                              weights=weights)
        took = (time.perf_counter() - started) * 1000
    if as_json:
        echo_json({"query": text, "hits": reply["hits"], "took_ms": round(took, 3),
                   **{name: reply.get(name) for name in ("mode", "coverage", "generation")}})
    else:
        print_hits(reply["hits"])
        print_coverage(reply)


@main.command()
@click.option("--model", "backend", required=True, type=click.Choice(BACKENDS),
              help="Backend to embed with (configured in its section of the config file).")
@click.pass_context
def reembed(ctx: click.Context, backend: str) -> None:
    """Rebuild every vector with another model, the system stopped. The current store stays
    as it is until the new one is complete, then is swapped out (kept in data/previous/).
    Interrupted, it resumes on the next run. Afterwards set embedder.backend to the new
    backend before `roxi start`."""
    cfg = _cfg(ctx)
    with Bar(f"re-embedding with {backend}") as bar:
        result = run_reembed(cfg, backend, progress=bar)
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
    bar = Bar(f"indexing to {target:g} %", lazy=True, show_pos=True, item=rate_eta)
    try:
        with bar:
            final = operations.process_until(cfg, target, timeout=timeout,
                                             on_progress=lambda stats: bar(stats["indexed"], stats["chunks"], stats))
    except KeyboardInterrupt:  # process_until paused processing on its way out
        click.echo(f"interrupted at {service.store_stats(cfg)['percent']:.1f} %: processing paused", err=True)
        ctx.exit(130)
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
    stats = operations.wait_for(_cfg(ctx), target, interval=interval)
    click.echo(f"reached {stats['percent']:.1f} % ({stats['indexed']}/{stats['chunks']} chunks, "
               f"{stats['failed']} failed)")
    code = operations.run_hook(command, stats) if command else 0
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
    cfg = _cfg(ctx)
    made = keys_mod.generate(cfg, client)
    if "server" in made:
        click.echo(f"server key pair: {made['server']} (+ .key_secret)")
    click.echo(f"client {client!r}: give the client {made['client_secret']} and {made['server_public']}")
    click.echo(f"allowed: {made['allowed']} (a running query server admits it after `roxi restart query`)")


@main.group()
def backup() -> None:
    """Consistent online backups: create, list, verify, prune (and `roxi restore`)."""


@backup.command("create")
@click.pass_context
def backup_create(ctx: click.Context) -> None:
    """Snapshot the store now, also while ingest runs (SQLite online backup + committed rows)."""
    with Bar("backing up") as bar:
        path, removed = operations.backup(_cfg(ctx), kind="manual", progress=bar)
    click.echo(f"backup {path}" + (f" (pruned {len(removed)} old)" if removed else ""))


@backup.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def backup_list(ctx: click.Context, as_json: bool) -> None:
    """Backups, oldest first: name, created, kind, rows, chunks, size."""
    cfg = _cfg(ctx)
    infos = backup_mod.list_backups(cfg.backup_dir)
    if as_json:
        echo_json([{"path": str(i.path), "bytes": i.bytes, **json.loads(i.manifest.to_json())} for i in infos])
    else:
        print_backups(infos, cfg.backup_dir)


@backup.command("verify")
@click.argument("name")
@click.pass_context
def backup_verify(ctx: click.Context, name: str) -> None:
    """Check checksums, SQLite integrity, and that rows and chunk states agree (exit 7 if not)."""
    path = operations.find_backup(_cfg(ctx), name)
    with Bar("verifying") as bar:
        m = backup_mod.verify(path, progress=bar)
    click.echo(f"ok: {path.name} ({m.rows} rows, {m.chunks} chunks, {m.model_id or 'no model'})")


@backup.command("prune")
@click.option("--keep", type=click.IntRange(1), default=None, help="Backups to keep (default backup.keep).")
@click.pass_context
def backup_prune(ctx: click.Context, keep: int | None) -> None:
    """Delete all but the newest backups."""
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
    cfg = _cfg(ctx)
    path = operations.find_backup(cfg, name)
    with Bar("restoring", lazy=True) as bar:  # lazy: no bar while a running system is refused or stopped
        m = operations.restore(cfg, path, stop_first=stop_first, progress=bar)
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
    report = operations.progress_report(_cfg(ctx), target=target)
    if as_json:
        echo_json(report)
    else:
        print_progress(report)
    if not report.get("reached", True):
        ctx.exit(TARGET_NOT_REACHED)


if __name__ == "__main__":  # pragma: no cover
    main()
