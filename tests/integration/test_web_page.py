"""The resources page in a real headless browser, and the HTTP endpoint of a real supervisor (issue 20).

Chromium comes from the distribution's packages: `./run.sh test` installs it when it can
(as root, with apt-get); without it the browser test is skipped with the reason. The
screenshot is kept in tests/out/ (or $ROXI_TEST_ARTIFACTS) with the test output.
"""

from __future__ import annotations

import html.parser
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from roxi_mp.memory import maps_file

from ..conftest import PATIENCE, wait_until
from .test_pipeline import roxi
from .test_sleep import MB, rss, wait_asleep

pytestmark = pytest.mark.integration

ARTIFACTS = Path(os.environ.get("ROXI_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "out")
#: milliseconds of page time the browser runs the page's script before it dumps the DOM
#: (virtual time: fetches complete within it, whatever the machine's load)
BROWSER_BUDGET_MS = 6000
ROLES = ("indexer", "query", "documents", "embedder-1")


def chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def web_url(cfg) -> str:
    path = cfg.run_dir / "web.url"
    wait_until(lambda: path.exists(), timeout=PATIENCE, what="the supervisor's web.url")
    return path.read_text().strip()


def get(url: str, *, headers: dict | None = None, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class Fields(html.parser.HTMLParser):
    """data-field / data-value pairs of the rendered page, per process row (data-role)."""

    def __init__(self) -> None:
        super().__init__()
        self.row: str | None = None
        self.roles: dict[str, dict[str, str]] = {}
        self.page: dict[str, str] = {}
        self.ready = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body" and a.get("data-ready") == "1":
            self.ready = True
        if tag == "tr" and "data-role" in a:
            self.row = a["data-role"]
            self.roles[self.row] = {}
        if "data-field" in a:
            target = self.roles[self.row] if tag == "td" and self.row else self.page
            target[a["data-field"]] = a.get("data-value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self.row = None


def render(url: str, screenshot: Path) -> tuple[Fields, list[str]]:
    """The page's DOM after its script ran, and the browser's console lines; saves a screenshot."""
    browser = chromium()
    common = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--no-first-run", "--disable-extensions", "--enable-logging=stderr", "--v=0",
              f"--virtual-time-budget={BROWSER_BUDGET_MS}", f"--user-data-dir={screenshot.parent / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = subprocess.run([*common, "--window-size=1280,1500", f"--screenshot={screenshot}", url],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-2000:]
    fields = Fields()
    fields.feed(dom.stdout)
    console = [line for line in (dom.stderr + shot.stderr).splitlines() if "CONSOLE" in line]
    return fields, console


def test_the_page_in_headless_chromium_shows_what_roxi_status_says(system, make_config, tmp_path) -> None:
    if chromium() is None:
        pytest.skip("Chromium is not installed: `./run.sh test` installs it (apt-get install chromium, as root); "
                    "without root or apt-get the browser test cannot run")
    cfg = make_config(supervisor__ingest_sample_on_empty=True, embedder__idle_seconds=2.0)
    s = system(cfg)
    s.wait_for(lambda: s.stats().chunks > 0 and s.stats().indexed == s.stats().chunks,
               timeout=PATIENCE, what="the sample corpus indexed")
    assert roxi(cfg, "sleep").returncode == 0
    wait_asleep(s, "query")
    # settled: the embedder and the indexer suspended (no state changes between page and status)
    s.wait_for(lambda: all(s.role(n)["state"] == "suspended" for n in ("embedder-1", "indexer")),
               timeout=PATIENCE, what="embedder and indexer suspended")
    settled_at = time.time()
    url = web_url(cfg)
    # A request starts the snapshot's refreshes, at the loop's pace: while every role sleeps
    # that is supervisor.sleep_poll_seconds, so what is served first may be from before the
    # roles settled.
    wait_until(lambda: json.loads(get(url + "page.json")[2])["as_of"] >= settled_at, timeout=PATIENCE,
               what="a snapshot taken after the roles settled")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "resources-page.png"
    screenshot.unlink(missing_ok=True)
    fields, console = render(url, screenshot)
    status = json.loads(roxi(cfg, "status", "--json").stdout)
    print(f"screenshot: {screenshot}")
    assert fields.ready, "the page never drew a snapshot"
    assert console == [], console  # no errors, no warnings, nothing logged
    assert set(fields.roles) == {"supervisor", *ROLES}
    for row in status["roles"]:
        shown = fields.roles[row["name"]]
        assert shown["state"] == row["state"], (shown, row)
        if row["pid"] is None:  # suspended in deep sleep (issue 22): no process, nothing resident
            assert row["state"] == "suspended" and not shown["pid"] and not shown["rss"], (shown, row)
            continue
        assert int(shown["pid"]) == row["pid"], (shown, row)
        assert abs(int(shown["rss"]) - row["rss"]) < max(5 * MB, row["rss"] // 10), (shown, row)
    assert int(fields.roles["supervisor"]["pid"]) == status["supervisor"]["pid"]
    store = status["store"]
    assert int(fields.page["indexed"]) == store["indexed"] and int(fields.page["chunks"]) == store["chunks"]
    assert float(fields.page["percent"]) == pytest.approx(store["percent"], abs=0.05)
    assert not maps_file(s.pid("query"), cfg.vectors_path)  # the page woke nothing


def test_status_json_is_roxi_status_and_metrics_and_unknown_paths(system, make_config) -> None:
    cfg = make_config()
    s = system(cfg)
    url = web_url(cfg)
    code, headers, body = get(url + "status.json")
    assert code == 200 and headers["Content-Type"].startswith("application/json")
    served = json.loads(body)
    status = json.loads(roxi(cfg, "status", "--json").stdout)
    assert set(served) == set(status) and set(served["store"]) == set(status["store"])
    assert [r["name"] for r in served["roles"]] == [r["name"] for r in status["roles"]]
    assert served["supervisor"]["pid"] == status["supervisor"]["pid"] == s.proc.pid
    assert get(url + "nothing-here")[0] == 404
    code, headers, body = get(url)
    assert code == 200 and b"roxi-mp resources" in body and headers["Content-Type"].startswith("text/html")
    assert b"http://" not in body.replace(b"http://www.w3.org", b"")  # nothing fetched from elsewhere


def test_a_non_loopback_bind_needs_the_token_from_the_data_directory(system, make_config) -> None:
    cfg = make_config(web__host="0.0.0.0")
    system(cfg)
    port = web_url(cfg).rsplit(":", 1)[1].strip("/")
    local = f"http://127.0.0.1:{port}/"
    token = (cfg.data_dir / "web.token").read_text().strip()
    assert oct((cfg.data_dir / "web.token").stat().st_mode & 0o777) == "0o600"
    assert get(local + "status.json")[0] == 401
    assert get(local + "status.json", headers={"Authorization": "Bearer nope"})[0] == 401
    assert get(local + "status.json", headers={"Authorization": f"Bearer {token}"})[0] == 200
    assert get(local)[0] == 200  # the page itself holds no data: its script sends the token


def test_asleep_the_page_and_scrapes_keep_the_query_server_at_its_floor(system, make_config) -> None:
    """Acceptance 2, the memory half (the CPU half is tests/bench/bench_web.py): every role
    asleep, the page and /metrics read every second, the query server stays unmapped."""
    cfg = make_config(supervisor__ingest_sample_on_empty=True, query__idle_seconds=1.0)
    s = system(cfg)
    s.wait_for(lambda: s.stats().chunks > 0 and s.stats().indexed == s.stats().chunks,
               timeout=PATIENCE, what="the sample corpus indexed")
    assert roxi(cfg, "sleep").returncode == 0
    wait_asleep(s, "query")
    pid = s.pid("query")
    floor = rss(pid)
    url = web_url(cfg)
    deadline = time.monotonic() + 5  # five rounds: the page's refreshes and a scraper's
    while time.monotonic() < deadline:
        for path in ("", "page.json", "status.json", "metrics"):
            assert get(url + path)[0] == 200
        time.sleep(1.0)
    assert s.role("query")["state"] == "asleep"
    assert not maps_file(pid, cfg.vectors_path)
    assert rss(pid) - floor < 5 * MB


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families
    code, headers, body = get(url + "metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body.decode()) for s in f.samples}


def test_metrics_parse_and_counters_never_go_down_across_a_restart(system, make_config) -> None:
    """Acceptance 3: prometheus_client's parser reads /metrics; the counters a role reports
    keep growing when that role is killed and restarted."""
    cfg = make_config(supervisor__ingest_sample_on_empty=True, web__refresh_seconds=0.2)
    s = system(cfg)
    s.wait_for(lambda: s.stats().chunks > 0 and s.stats().indexed == s.stats().chunks,
               timeout=PATIENCE, what="the sample corpus indexed")
    url = web_url(cfg)
    with s.query_client() as client:
        for i in range(5):
            client.query(f"gout attack {i}", k=3)
            client.query(f"methotrexate {i}", k=3, mode="dense")
        with pytest.raises(Exception):
            client.query("x", k=3, mode="sideways")
    # Counters come from each role's heartbeat, up to a beat behind the store (longer on a
    # loaded machine): wait for every one the test reads, not only the query server's.
    hybrid = ("roxi_queries_total", (("mode", "hybrid"),))
    wanted = {hybrid: 5, ("roxi_chunks_embedded_total", ()): 1, ("roxi_commits_total", ()): 1}
    wait_until(lambda: all(scrape(url).get(k, 0) >= v for k, v in wanted.items()), timeout=PATIENCE,
               what=f"the counters {[k[0] for k in wanted]} in /metrics")
    before = scrape(url)
    assert before[("roxi_queries_total", (("mode", "dense"),))] >= 5
    assert before[("roxi_query_errors_total", (("code", "bad_request"),))] >= 1
    assert before[("roxi_query_duration_seconds_count", (("mode", "hybrid"),))] >= 5
    victim = s.pid("query")
    os.kill(victim, signal.SIGKILL)
    s.wait_for(lambda: s.role("query")["state"] in ("running", "asleep") and s.pid("query") != victim,
               timeout=PATIENCE, what="the query server restarted")
    with s.query_client() as client:
        client.query("gout", k=3)
    restarts = ("roxi_role_restarts_total", (("role", "query"),))
    wait_until(lambda: scrape(url).get(restarts, 0) >= 1, timeout=PATIENCE, what="the restart in /metrics")
    after = scrape(url)
    for name, value in before.items():
        if name[0].endswith(("_total", "_count", "_sum", "_bucket")) and not name[0].startswith("roxi_cpu"):
            assert after.get(name, 0) >= value, (name, value, after.get(name))
    assert after[("roxi_cpu_seconds_total", (("role", "query"),))] >= before[("roxi_cpu_seconds_total", (("role", "query"),))]
