"""How the `roxi` CLI prints: status tables, rates and ETAs, search hits, and progress bars.

Output only, no rules: what to print comes from the library calls (roxi_mp.service,
roxi_mp.operations); this module decides how it reads on a terminal. Also the click type
of the one option value that is more than a click builtin (`roxi query --weights`).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def print_status(data: dict) -> None:
    sup = data.get("supervisor")
    click.echo(f"supervisor: {'pid %s, up %ss' % (sup['pid'], sup['uptime']) if sup else 'not running'}"
               + (f", resources page {sup['web']}" if sup and sup.get("web") else ""))
    print_roles(data)
    print_store(data["store"])


def print_roles(data: dict) -> None:
    for r in data.get("roles", []):
        rss = f"{r['rss'] / 2**20:.1f} MB" if r.get("rss") else "-"
        mapped = f" mapped {r['mapped_rss'] / 2**20:.1f}/{r['mapped_bytes'] / 2**20:.1f} MB" \
            if r.get("mapped_bytes") is not None else ""
        cpu = f"{r['cpu_percent']:.0f}%" if r.get("cpu_percent") is not None else "-"
        beat = f"{r['heartbeat_age']:.1f}s" if r.get("heartbeat_age") is not None else "-"
        up = f"{r['uptime']:.0f}s" if r.get("uptime") is not None else "-"
        click.echo(f"  {r['name']:<12} {r['state']:<9} pid {r['pid'] or '-':<8} up {up:<7} rss {rss:<10} "
                   f"cpu {cpu:<5} beat {beat:<6} restarts {r['restarts']}{mapped}")
        if r["state"] == "suspended":
            click.echo(f"      suspended {duration(r.get('suspended_seconds') or 0)} ago (deep sleep: no process); "
                       f"started again when work appears ({r.get('resumes', 0)} resumes)")
        backoff = max(r.get("backoff_seconds") or 0, (r.get("backend") or {}).get("backoff_seconds") or 0)
        if backoff:
            click.echo(f"      backing off {backoff:.1f} s ({(r.get('backend') or {}).get('last_error') or 'service down'})")
        if "batch_size" in (backend := r.get("backend") or {}):  # an http embedder's request sizing
            latency = backend.get("seconds_per_text")
            click.echo(f"      requests of {backend['batch_size']} texts, {backend.get('concurrency')} at once, "
                       f"{'-' if latency is None else f'{latency:.2f}'} s/text, "
                       f"{backend.get('texts_per_second') or 0:.1f} texts/s, {backend.get('timeouts', 0)} timeouts")
        if (conc := r.get("concurrency") or {}).get("mode") in ("all", "one") and r["state"] == "running":
            why = "every core: nobody is querying" if conc["mode"] == "all" else \
                "a core left to queries or other work"
            click.echo(f"      embedding {conc['workers']} batch{'es' if conc['workers'] > 1 else ''} at once "
                       f"({why}), {backend.get('compute', 'float32')} compute")
        if r.get("last_error"):
            click.echo(f"      commits failing ({r.get('commit_failures', 0)} attempts, retrying): {r['last_error']}")
        if r.get("index") not in (None, "exact") and r.get("ann_rows") is not None and r["name"] == "indexer":
            building = ", building" if r.get("building") else ""
            click.echo(f"      {r['index']} index covers {r['ann_rows']:,} rows{building}"
                       f" ({r.get('builds', 0)} builds, {r.get('build_failures', 0)} failures)")
        if r["name"] == "indexer":
            print_compaction(r.get("compaction"), indent="      ")
        if r["state"] == "failed":
            click.echo(f"      exit code {r.get('exit_code')}; last log lines:")
            for line in r.get("log_tail", [])[-5:]:
                click.echo(f"      | {line}")


def rate_eta(stats: dict) -> str:
    rate, eta = stats.get("rate_per_second") or 0.0, stats.get("eta_seconds")
    if eta is None:
        return f"{rate:.1f} chunks/s, no ETA"
    return f"{rate:.1f} chunks/s, ETA {duration(eta)}"


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def print_store(s: dict) -> None:
    click.echo(f"store: {s['documents']} documents, {s['chunks']} chunks, {s['indexed']} indexed "
               f"({s['percent']:.1f} %), {s['pending'] + s['leased']} pending, {s['failed']} failed; "
               f"{rate_eta(s)}{'; PROCESSING PAUSED (roxi resume)' if s.get('paused') else ''}")
    print_rows(s)


def print_rows(s: dict) -> None:
    """Live and dead rows, reused vectors and replacements, once there is any of them."""
    live, dead = s.get("live_rows", s.get("committed_rows", 0)), s.get("dead_rows", 0)
    reused, replacing = s.get("reused", 0), s.get("replacing", 0)
    if not (live or dead or reused or replacing):
        return
    click.echo(f"rows: {live} live, {dead} dead{' (`roxi compact` gives them back)' if dead else ''}; "
               f"{reused} vectors reused, not embedded again; {replacing} documents being replaced")


def print_compaction(c: dict | None, indent: str = "") -> None:
    """The indexer's compaction report (DESIGN17: running, last, reclaimable_bytes, refused, count)."""
    if not c:
        return
    state = "running" if c.get("running") else "idle"
    click.echo(f"{indent}compaction: {state}, {c.get('count', 0)} done, "
               f"{size(c.get('reclaimable_bytes') or 0)} reclaimable")
    if c.get("last"):
        click.echo(f"{indent}  last: {describe(c['last'])}")
    if c.get("refused"):
        click.echo(f"{indent}  refused: {c['refused']}")


def describe(fields: dict) -> str:
    """A report's scalar fields as `name value` pairs; *_bytes as sizes, *_at as ages."""
    parts = []
    for name, value in fields.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            parts.append(f"{name} {value}")
        elif name.endswith("bytes") and isinstance(value, (int, float)):
            parts.append(f"{name} {size(value)}")
        elif name.endswith("_at") or name in ("at", "finished", "started"):
            parts.append(f"{name} {ago(value)}")
        elif isinstance(value, float):
            parts.append(f"{name} {value:.2f}")
        else:
            parts.append(f"{name} {value}")
    return ", ".join(parts)


def ago(when: Any) -> str:
    if not isinstance(when, (int, float)) or isinstance(when, bool):
        return str(when)
    return f"{duration(max(0.0, time.time() - when))} ago"


def size(n: float) -> str:
    if n < 1 << 20:
        return f"{n / 1024:.1f} KB"
    if n < 1 << 30:
        return f"{n / 2**20:.1f} MB"
    return f"{n / 2**30:.2f} GB"


def print_ingest(report) -> None:
    click.echo(f"added {report.added} documents, {report.replaced} replaced, {report.unchanged} unchanged, "
               f"{report.empty} empty, {len(report.removed)} removed, {len(report.errors)} skipped; "
               f"{report.chunks} chunks to index ({report.reused} reuse a stored vector)")
    for key in report.removed:
        click.echo(f"removed {key}")
    for path, reason in report.errors:
        click.echo(f"skipped {path}: {reason}", err=True)


def print_documents(page: dict) -> None:
    rows = page["documents"]
    if not rows:
        click.echo("no documents")
        return
    width = min(max(len(r["key"]) for r in rows), 72)
    click.echo(f"{'KEY':<{width}}  {'STATUS':<9} {'VERSION':>7}  {'INDEXED/CHUNKS':>14}  FAILED")
    for r in rows:
        status = "replacing" if r["status"] == "pending" else r["status"]
        chunks = f"{r['indexed']}/{r['chunks']}"
        click.echo(f"{r['key']:<{width}}  {status:<9} {r['version']:>7}  {chunks:>14}  {r['failed']}")
    if page.get("after") is not None:
        click.echo(f"(more: roxi docs --after {shlex.quote(page['after'])})")


def print_compact(reply: dict) -> None:
    if reply.get("started"):
        click.echo("compaction started")
    elif reply.get("running"):
        click.echo("a compaction is already running")
    else:
        click.echo(reply.get("message") or "no compaction started")


def where(hit: dict) -> str:
    """Where a hit is in its document, as `roxi query` cites it: " p. 12", " § Methods >
    Dosing", or the chunk's number when neither is known (" #3")."""
    if hit.get("page") is not None:
        return f" p. {hit['page']}"
    if hit.get("heading"):
        return f" § {hit['heading']}"
    return f" #{hit['position']}"


def print_hits(hits: list[dict]) -> None:
    if not hits:
        click.echo("no results (is anything indexed yet? see `roxi progress`)")
    for h in hits:
        found = legs(h)
        click.echo(f"{h['rank']:>3}. {h['score']:.4f}  {h['title']}  [{Path(h['source']).name}{where(h)}]"
                   f"{f'  ({found})' if found else ''}")
        snippet = h.get("text", "")
        click.echo(f"     {snippet[:240]}{'...' if len(snippet) > 240 else ''}")


def legs(hit: dict) -> str:
    """Which legs found a hit, at which rank, as `roxi query` shows it: "dense #3, words #1",
    "words #2, not embedded yet"; "" for a reply from a server without the fields."""
    parts = [f"{name} #{hit[field]}" for name, field in (("dense", "dense_rank"), ("words", "lexical_rank"))
             if hit.get(field) is not None]
    if hit.get("embedded") is False:
        parts.append("not embedded yet")
    return ", ".join(parts)


#: coverage below which `roxi query` warns that answers miss much of the library, percent
ADVISED_COVERAGE = 50.0


def print_coverage(reply: dict) -> None:
    """How much of the library the answer covers (stdout), and a warning on stderr below
    ADVISED_COVERAGE: chunks not embedded yet are found by their words alone."""
    c = reply.get("coverage")
    if not c:
        return  # an older server
    click.echo(f"coverage: {c['indexed']:,} of {c['chunks']:,} chunks embedded ({c['percent']:g} %), "
               f"{c['pending']:,} pending, {c['failed']:,} failed; {reply.get('mode', '?')} search")
    if c["chunks"] and c["percent"] < ADVISED_COVERAGE:
        click.echo(f"warning: these answers cover {c['percent']:g} % of the library ({c['indexed']:,} of "
                   f"{c['chunks']:,} chunks embedded); ROXI advises {ADVISED_COVERAGE:g} % before heavy use",
                   err=True)


class Weights(click.ParamType):
    """`--weights DENSE,LEXICAL`: two numbers in [0, 1], not both 0, made into the query's
    {"dense", "lexical"} map (the server checks them again); a bad value is a usage error."""

    name = "weights"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dict[str, float]:
        if isinstance(value, dict):
            return value
        try:
            dense, lexical = (float(part) for part in str(value).split(","))  # not two: ValueError too
        except ValueError:
            self.fail(f"expected two numbers DENSE,LEXICAL such as 0.5,1, got {value!r}", param, ctx)
        if not (0 <= dense <= 1 and 0 <= lexical <= 1):  # nan too
            self.fail(f"each weight must be in [0, 1], got {value!r}", param, ctx)
        if dense == lexical == 0:
            self.fail("the dense and lexical weights cannot both be 0", param, ctx)
        return {"dense": dense, "lexical": lexical}


def print_progress(report: dict) -> None:
    click.echo(f"{report['indexed']}/{report['chunks']} chunks indexed ({report['percent']:.1f} %), "
               f"{report['failed']} failed; {rate_eta(report)}{' (paused)' if report['paused'] else ''}")
    for f in report["failures"]:
        click.echo(f"  failed chunk {f['chunk_id']} of {Path(f['source']).name}: {f['error']}")
    if report["failed"]:
        click.echo("  (`roxi retry-failed` puts them back)")
    print_rows(report)
    print_compaction(report.get("compaction"))


def print_backups(infos: list, backup_dir: Path) -> None:
    if not infos:
        click.echo(f"no backups in {backup_dir}")
    for i in infos:
        m = i.manifest
        click.echo(f"{i.path.name}  {m.created}  {m.kind:<9} rows {m.rows:<9} chunks {m.chunks:<9} "
                   f"{i.bytes / 2**20:.1f} MB  {m.model_id or '-'}")


class Bar:
    """A progress bar on stderr, itself the `progress(done, total)` callback of the work.

    Where stderr is no terminal (or `enabled` is false) there is none: scripts get one-line
    errors. An eager bar shows when entered; a `lazy` one at the first report, so that what
    runs before the work (checks that may refuse, a stop) prints no bar, and then only if
    that first total exceeds `min_total`. `item(last)` formats the `last` value reported.
    """

    def __init__(self, label: str, *, lazy: bool = False, min_total: int = 0, enabled: bool = True,
                 show_pos: bool = False, item: Callable[[Any], str] | None = None) -> None:
        self.label, self.lazy, self.min_total, self.show_pos, self.item = label, lazy, min_total, show_pos, item
        self.enabled = enabled and sys.stderr.isatty()
        self.last: Any = None
        self._bar: Any = None
        self._reported = False

    def __enter__(self) -> "Bar":
        if not self.lazy:
            self._open(1)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def __call__(self, done: int, total: int, last: Any = None) -> None:
        self.last = last
        if self.lazy and not self._reported and total > self.min_total:
            self._open(total)
        self._reported = True
        if self._bar is not None:
            self._bar.length = max(total, 1)
            self._bar.update(done - self._bar.pos)

    def _open(self, length: int) -> None:
        if not self.enabled:
            return
        show = {} if self.item is None else {"item_show_func": lambda _: self.item(self.last)}
        self._bar = click.progressbar(length=length, label=self.label, file=sys.stderr, show_pos=self.show_pos,
                                      **show)
        self._bar.__enter__()
