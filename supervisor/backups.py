"""Scheduled backups: every `backup.interval_seconds`, and each time indexing crosses
another 10 % of the corpus (10 %, 20 %, ... so 50 % too).

One backup at a time runs as a child process (roxi_mp.backup_job); this class only
decides when, starts it, reaps it and remembers the outcome for status. The last milestone
backed up is kept in the store's meta, so a restart does not repeat it; the time of the
last backup is read from the backups on disk, so manual backups count too.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

from roxi_mp.backup import list_backups
from roxi_mp.config import Config
from roxi_mp.store import Store

log = logging.getLogger("roxi.supervisor")

#: store meta key: the last 10 % milestone a backup was taken at
META_MILESTONE = "backup_milestone"


class BackupScheduler:
    def __init__(self, cfg: Config, store: Store, now: float) -> None:
        self.cfg = cfg
        self.store = store
        self.next_check = now + cfg.backup.check_seconds
        self.proc: subprocess.Popen | None = None
        self.kind: str | None = None
        self.milestone = 0
        self.last: dict[str, Any] | None = None
        self.taken = 0

    def running(self) -> bool:
        return self.proc is not None

    def manage(self, now: float, *, stopping: bool) -> None:
        if self.proc is not None:
            if stopping and self.proc.poll() is None:
                # A stop must not wait out a large copy: the job leaves a .partial directory.
                self.proc.terminate()
            self._reap()
            return
        if stopping or now < self.next_check:
            return
        self.next_check = now + self.cfg.backup.check_seconds
        kind, milestone = self.due()
        if kind:
            self._start(kind, milestone)

    def due(self) -> tuple[str | None, int]:
        """("milestone", decade) or ("scheduled", 0) when a backup is due, else (None, 0)."""
        b = self.cfg.backup
        stats = self.store.stats()
        if b.milestones and stats.chunks:
            decade = int(stats.percent // 10) * 10
            done = int(self.store.get_meta(META_MILESTONE, "0") or 0)
            if decade >= 10 and decade > done:
                return "milestone", decade
        if b.interval_seconds and stats.chunks:
            backups = list_backups(self.cfg.backup_dir)
            newest = _epoch(backups[-1].manifest.created) if backups else 0.0
            if time.time() - newest >= b.interval_seconds:
                return "scheduled", 0
        return None, 0

    def _start(self, kind: str, milestone: int) -> None:
        self.kind, self.milestone = kind, milestone
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roxi_mp.backup_job", *self.cfg.to_argv(), "--kind", kind],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            close_fds=True)
        log.info("%s backup started (pid %d)%s", kind, self.proc.pid,
                 f" at {milestone} %" if kind == "milestone" else "")

    def _reap(self) -> None:
        code = self.proc.poll()
        if code is None:
            return
        out = (self.proc.stdout.read() or "").strip().splitlines()
        self.proc.stdout.close()
        try:
            result = json.loads(out[-1]) if out else {"ok": False, "error": f"exit {code}"}
        except ValueError:
            result = {"ok": False, "error": out[-1][:300]}
        result.update(kind=self.kind, finished=datetime.now().isoformat(timespec="seconds"), exit_code=code)
        if result.get("ok") and self.kind == "milestone":
            with self.store.transaction():
                self.store._set_meta(META_MILESTONE, str(self.milestone))
        self.last = result
        self.taken += bool(result.get("ok"))
        level = logging.INFO if result.get("ok") else logging.ERROR
        log.log(level, "%s backup %s", self.kind, result.get("path") or f"failed: {result.get('error')}")
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # leaves a .partial directory, cleaned later
            self.proc.wait(timeout=5)

    def status(self) -> dict[str, Any]:
        return {"running": self.kind if self.proc is not None else None, "last": self.last,
                "taken": self.taken, "dir": str(self.cfg.backup_dir)}


def _epoch(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
