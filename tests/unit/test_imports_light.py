"""The supervisor and the documents role import no numpy, faiss, onnxruntime or tokenizers.

Issue 22 sleeps the whole system in 110 MB: numpy alone costs about 7 MB of RSS, so the
processes that never make an array must not load it, neither at import nor when the
supervisor does its daily work (boot, status, the resources page and /metrics, the backup
schedule, the compact and notify commands). A fresh interpreter does each of these in turn
and reports which heavy modules it holds after each; a backup itself runs in a child process
(roxi_mp.backup_job) and may import what it likes. prometheus_client (9 MB) comes in only
when /metrics is scraped, and ssl (4 MB, which asyncio would bring along) not at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: seconds the subprocess may take (it boots a store and builds a status: well under 5 s)
TIMEOUT = 120.0

SCRIPT = r"""
import json, os, sys, time
HEAVY = ("numpy", "faiss", "onnxruntime", "tokenizers", "prometheus_client", "ssl")
seen = {}
def check(step):
    seen[step] = sorted(m for m in HEAVY if m in sys.modules)

import roxi_mp.roles.documents
import supervisor.arbiter, supervisor.backups, supervisor.commands, supervisor.dashboard
import supervisor.metrics, supervisor.status, supervisor.web
check("import")

from roxi_mp import config
from roxi_mp.compact_schedule import disk_refusal
from supervisor.arbiter import Arbiter
from supervisor.backups import BackupScheduler
from supervisor.boot import open_data_dir
from supervisor.commands import dispatch
from supervisor.dashboard import Dashboard

class Proc:  # a child that never exits; it is this very process, so /proc has a row for it
    def __init__(self, argv, **options):
        self.pid, self.returncode = os.getpid(), None
        read, self.write_fd = os.pipe()
        self.stdout = os.fdopen(read, "rb")
    def poll(self):
        return None

cfg = config.load(sys.argv[2], data_dir=sys.argv[1], env={})
arbiter = Arbiter(cfg, popen=Proc)
arbiter.acquire()
arbiter.store = open_data_dir(cfg)
check("boot")
now = arbiter.clock()
arbiter.backups = BackupScheduler(cfg, arbiter.store, now)
arbiter.spawn_children(now)
for child in arbiter.children:
    child.beat({"state": "running", "pid": child.pid}, now)
arbiter.status()
check("status")
Dashboard(arbiter).publish(now, sample=True)
check("page")
arbiter.backups.due()
check("backups")
dispatch(arbiter, {"op": "compact"})
disk_refusal(cfg, live_rows=1000, dim=256)
check("compact")
arbiter.publish = lambda *args: None  # no sockets here: what notify decides is what counts
dispatch(arbiter, {"op": "notify", "event": "pause"})
check("notify")
print(json.dumps(seen))
"""


def run_script(cfg) -> dict[str, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(cfg.data_dir), str(cfg.config_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_the_supervisor_and_documents_role_import_no_heavy_modules(make_config) -> None:
    seen = run_script(make_config(supervisor__ingest_sample_on_empty=True))
    assert list(seen) == ["import", "boot", "status", "page", "backups", "compact", "notify"]
    assert seen == {step: [] for step in seen}
