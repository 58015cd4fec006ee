"""What the supervisor does to its data directory before it opens a socket or spawns a role.

The directories exist (the run directory owner-only: its sockets are the door to the
data), CURVE keys exist when an endpoint needs them, an interrupted store swap is finished,
and an empty store gets the sample corpus when the configuration asks for it (from a
child process: roxi_mp.sample).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from roxi_mp import ingest, keys
from roxi_mp.config import Config
from roxi_mp.staging import complete_swap
from roxi_mp.store import Store

log = logging.getLogger("roxi.supervisor")

#: seconds the sample corpus may take to ingest (a few on this 2-core machine)
SAMPLE_TIMEOUT_SECONDS = 300.0


def open_data_dir(cfg: Config) -> Store:
    """Prepare the data directory (the caller holds its lock) and open the store."""
    if keys.needs_keys(cfg):
        keys.server_keys(cfg)  # a tcp:// endpoint without CURVE keys never opens
    for d in (cfg.data_dir, cfg.log_dir):
        d.mkdir(parents=True, exist_ok=True)
    cfg.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(cfg.run_dir, 0o700)  # sockets are the door to the data: owner only
    if complete_swap(cfg):  # a reembed or restore was interrupted mid-swap: finish it
        log.warning("finished an interrupted store swap (old files in %s)", cfg.data_dir / "previous")
    store = Store.open(cfg)
    if cfg.supervisor.ingest_sample_on_empty and ingest.is_empty_store(store):
        ingest_sample(cfg)
    return store


def ingest_sample(cfg: Config) -> None:
    """The sample corpus, ingested by a child (roxi_mp.sample: what reading it loads stays
    out of the supervisor); a failure is logged and the system starts without it."""
    try:
        done = subprocess.run([sys.executable, "-m", "roxi_mp.sample", *cfg.to_argv()], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=SAMPLE_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        log.error("sample corpus: not ingested within %.0f s", SAMPLE_TIMEOUT_SECONDS)
        return
    for line in done.stdout.splitlines():
        (log.warning if line.startswith("skipped") else log.info)("%s", line)
    if done.returncode != 0:
        log.error("sample corpus: %s", (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1])
