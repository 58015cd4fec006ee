"""What the supervisor's HTTP endpoint serves (issue 20): the resources page, /status.json,
/page.json and /metrics, as bytes prepared by the supervisor's loop.

The HTTP server (supervisor.web) runs in a thread of its own and only hands out the bytes
last published here: a request never waits for the loop, never reads the store, never asks
a role anything, so it cannot wake a sleeping role nor delay a heartbeat. The loop calls
`tick(now)` every turn; it rebuilds the snapshot only when it is due:

- every `web.sample_seconds` for the history (a bounded ring: per process RSS, CPU and
  mapped bytes, and the progress), whether or not anybody looks;
- every `web.refresh_seconds` while somebody reads (a request in the last READ_WINDOW s),
  at the loop's pace: while every role sleeps the loop turns every
  `supervisor.sleep_poll_seconds`, and so does the snapshot (its `as_of` says when). Waking
  the loop on each stale request was measured and not kept: at one refresh a second the
  supervisor alone used 0.85 % of a core asleep (bench_web; the whole system's bound: 1 %).

So an idle system pays one small status read per sample, and a page left open pays one
per refresh, however many clients poll (acceptance 2 and 4 of the issue).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from roxi_mp import service
from roxi_mp.backup import list_backups

from . import metrics
from .backups import _epoch
from .status import build_status

if TYPE_CHECKING:
    from .arbiter import Arbiter

log = logging.getLogger("roxi.supervisor")

#: seconds after a request during which the snapshot is kept fresh (refresh_seconds)
READ_WINDOW = 15.0
#: the page itself: one HTML file with its script, no build step, no CDN
PAGE = Path(__file__).with_name("page.html")
#: seconds between reads of the slower sources (backups on disk, log tails, failures)
SLOW_SECONDS = 10.0
#: bytes read from the end of each log file when looking for its last errors
LOG_TAIL_BYTES = 64 * 1024
#: error lines shown, newest first
LOG_ERRORS = 20
#: failed chunks shown with their errors
FAILURES = 20
#: log levels the page lists
LOG_LEVELS = (" ERROR ", " CRITICAL ", " WARNING ")
#: hosts that need no token
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class Dashboard:
    def __init__(self, arbiter: Arbiter, *, wall: Callable[[], float] = time.time) -> None:
        self.arbiter = arbiter
        self.cfg = arbiter.cfg
        self.wall = wall
        web = self.cfg.web
        self.history: collections.deque = collections.deque(maxlen=max(1, int(web.history_seconds // web.sample_seconds)))
        #: path -> (content type, body); replaced whole by the loop, read by the server thread
        self.published: dict[str, tuple[str, bytes]] = {}
        self.read_at = float("-inf")  # monotonic time of the last request (set by the server thread)
        self.refreshed_at = float("-inf")
        self.sampled_at = float("-inf")
        self.slow_at = float("-inf")
        self.slow: dict[str, Any] = {"backups": {}, "log_errors": [], "failures": []}
        self.asleep_since: dict[str, float] = {}
        self.counters = metrics.Counters()  # role counters, kept across restarts
        #: what /metrics renders (in the server thread, when asked): (status, counters)
        self.metrics_input: tuple[dict[str, Any], metrics.Counters] = ({"roles": []}, metrics.Counters())
        #: (the metrics_input it was made from, its exposition): one render per snapshot
        self.rendered: tuple[Any, bytes] | None = None
        self.server: Any = None
        self.url: str | None = None
        self.error: str | None = None
        self.page = PAGE.read_bytes()

    # --- the server ------------------------------------------------------------------
    def start(self) -> None:
        """Bind and serve; a port that cannot be bound is logged, and the system runs on
        without the page (monitoring must not take the service down)."""
        from .web import Response, WebServer, is_loopback

        web = self.cfg.web
        token = None if is_loopback(web.host) else self._token()

        def route(path: str) -> Callable[[], Response]:
            def serve() -> Response:
                self.read_at = time.monotonic()
                content_type, body = self.published.get(path, ("application/json", b"{}"))
                return Response(200, body, content_type)
            return serve

        def scrape() -> Response:  # rendered here, on demand: see supervisor.metrics
            self.read_at = time.monotonic()
            return Response(200, self.exposition(), metrics.content_type())

        routes = {"/": lambda: Response(200, self.page, "text/html; charset=utf-8"),
                  **{p: route(p) for p in ("/status.json", "/page.json")}, "/metrics": scrape}
        self.publish(time.monotonic())
        try:
            self.server = WebServer(web.host, web.port, routes, token=token, public=("/",),
                                    max_connections=web.max_connections, request_seconds=web.request_seconds)
            self.server.start()
        except OSError as exc:
            self.server, self.error = None, f"cannot serve on {web.host}:{web.port}: {exc}"
            log.error("resources page: %s", self.error)
            return
        self.url = self.server.url
        self._write_url()
        if token:
            log.warning("resources page on %s (not loopback): every request needs the bearer token in %s",
                        self.url, self.token_path)
        else:
            log.info("resources page on %s", self.url)

    def exposition(self) -> bytes:
        """/metrics of the current snapshot (server thread): rendered at the first scrape
        after each publish and reused by the scrapes until the next (1.1 ms a render here;
        a scraper polling 100 times a second paid it at each)."""
        source, rendered = self.metrics_input, self.rendered
        if rendered is None or rendered[0] is not source:
            rendered = self.rendered = (source, metrics.render(*source))
        return rendered[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.url_path.unlink(missing_ok=True)

    @property
    def token_path(self) -> Path:
        return self.cfg.data_dir / "web.token"

    @property
    def url_path(self) -> Path:
        return self.cfg.run_dir / "web.url"

    def _token(self) -> str:
        """The bearer token of a non-loopback bind: made once (0600), kept across restarts."""
        path = self.token_path
        if not path.exists():
            import secrets  # only for a non-loopback bind: it loads libcrypto (3.6 MB)

            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32) + "\n")
        return path.read_text().strip()

    def _write_url(self) -> None:
        tmp = self.url_path.with_suffix(".tmp")
        tmp.write_text(self.url + "\n")
        os.replace(tmp, self.url_path)

    # --- the loop's side -------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Called by the loop every turn: sample and publish when due; cheap otherwise."""
        web = self.cfg.web
        sample = now - self.sampled_at >= web.sample_seconds
        reading = now - self.read_at < READ_WINDOW and now - self.refreshed_at >= web.refresh_seconds
        if sample or reading:
            self.publish(now, sample=sample)

    def publish(self, now: float, *, sample: bool = False) -> None:
        status = self.status(now)
        wall = self.wall()
        self._follow_sleep(status, wall)
        if sample:
            self.history.append(_sample(status, wall))
            self.sampled_at = now
        if now - self.slow_at >= SLOW_SECONDS:
            self.slow = self._slow_sources()
            self.slow_at = now
        page = {"as_of": wall, "status": status, "asleep_since": self.asleep_since,
                "web": {"url": self.url, "sample_seconds": self.cfg.web.sample_seconds},
                "history": list(self.history), **self.slow}
        published = {"/status.json": ("application/json", _json(status)),
                     "/page.json": ("application/json", _json(page))}
        for row in status["roles"]:
            self.counters.observe(row["name"], row.get("pid"), metrics.role_counts(row))
        backups = self.slow["backups"]
        last = backups.get("last")
        exported = {**status, "backups": {"count": backups.get("count", 0), "taken": backups.get("taken", 0),
                                          "last_epoch": (_epoch(last) or None) if last else None}}
        self.metrics_input = (exported, self.counters.copy())  # replaced whole, never changed
        self.published = published
        self.refreshed_at = now

    def status(self, now: float) -> dict[str, Any]:
        """What `roxi status --json` prints, from the supervisor's side (no role asked)."""
        arbiter = self.arbiter
        inner = build_status(arbiter, now)
        return {"running": True, "supervisor": inner["supervisor"], "roles": inner["roles"],
                "store": service.stats_of(arbiter.store, now=self.wall())}

    def _follow_sleep(self, status: dict[str, Any], wall: float) -> None:
        for row in status["roles"]:
            if row.get("state") == "asleep":
                self.asleep_since.setdefault(row["name"], wall)
            else:
                self.asleep_since.pop(row["name"], None)

    def _slow_sources(self) -> dict[str, Any]:
        return {"backups": self._backups(), "log_errors": log_errors(self.cfg.log_dir),
                "failures": [{"chunk_id": cid, "source": source, "error": error}
                             for cid, source, error in self.arbiter.store.failures(FAILURES)]}

    def _backups(self) -> dict[str, Any]:
        b = self.cfg.backup
        found = list_backups(self.cfg.backup_dir)
        last = found[-1].manifest.created if found else None
        scheduler = self.arbiter.backups.status()
        return {"count": len(found), "last": last, "running": scheduler["running"], "taken": scheduler["taken"],
                "last_result": scheduler["last"], "interval_seconds": b.interval_seconds,
                "milestones": b.milestones, "dir": scheduler["dir"]}


def _sample(status: dict[str, Any], wall: float) -> dict[str, Any]:
    """One point of the history: {t, roles: {name: [rss, cpu %, mapped bytes, state]}, indexed, chunks}."""
    store, me = status["store"], status["supervisor"]
    roles = {r["name"]: [r.get("rss"), r.get("cpu_percent"), r.get("mapped_bytes"), r.get("state")]
             for r in status["roles"]}
    roles["supervisor"] = [me.get("rss"), me.get("cpu_percent"), None, me.get("state")]
    return {"t": round(wall, 1), "indexed": store.get("indexed", 0), "chunks": store.get("chunks", 0),
            "roles": roles}


def log_errors(log_dir: Path, limit: int = LOG_ERRORS) -> list[dict[str, str]]:
    """The newest error and warning lines of every log file (the tail of each only)."""
    found = []
    for path in sorted(log_dir.glob("*.log")):
        try:
            with open(path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            continue
        found += [{"log": path.stem, "line": line[:500]} for line in lines if any(lv in line for lv in LOG_LEVELS)]
    found.sort(key=lambda e: e["line"][:23], reverse=True)  # lines start with their time
    return found[:limit]


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()
