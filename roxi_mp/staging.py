"""Replacing the live store by a complete one built aside, with no half-done state ever.

`roxi reembed` (and restore) build a whole store (database and vectors file) in
`<data_dir>/staging/<name>/`, make it durable, and only then swap it in. Two renames cannot
be atomic together, so the swap is made recoverable instead: a marker file written (and
fsynced) before the first rename lists the plan, and `complete_swap()` rolls it forward
from wherever a crash stopped it; every step is idempotent. The supervisor calls it before
opening the store, so a swap interrupted by a crash or power loss finishes on the next
start. The replaced files are kept in `<data_dir>/previous/` for a manual rollback.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

from .config import Config

#: the files that make a store, relative to the data directory
STORE_FILES = ("roxi.sqlite3", "vectors.faiss")
#: SQLite's companions of a database file, which must travel with it
SIDE_SUFFIXES = ("-wal", "-shm")
MARKER = "swap.json"


def stage_dir(cfg: Config, name: str) -> Path:
    return cfg.data_dir / "staging" / name


def checkpoint(db: Path) -> None:
    """Fold the WAL into the database file and drop it, so the file alone is the database."""
    conn = sqlite3.connect(str(db), isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")  # removes the -wal and -shm files
    finally:
        conn.close()


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a rename is durable only once its directory is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_in(cfg: Config, stage: Path) -> Path:
    """Make the store in `stage` the live one; returns where the old files went."""
    for name in STORE_FILES:
        if not (stage / name).exists():
            raise FileNotFoundError(f"staged store is incomplete: {stage / name} is missing")
    checkpoint(stage / "roxi.sqlite3")
    for name in STORE_FILES:
        fsync_path(stage / name)
    if cfg.db_path.exists():
        checkpoint(cfg.db_path)  # the live WAL must not survive next to the new database
    marker = cfg.data_dir / MARKER
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"stage": str(stage), "files": list(STORE_FILES)}))
    fsync_path(tmp)
    os.replace(tmp, marker)
    fsync_path(cfg.data_dir)
    complete_swap(cfg)
    return cfg.data_dir / "previous"


def complete_swap(cfg: Config) -> bool:
    """Finish a swap that a marker says was started; True if there was one."""
    marker = cfg.data_dir / MARKER
    if not marker.exists():
        return False
    plan = json.loads(marker.read_text())
    stage = Path(plan["stage"])
    previous = cfg.data_dir / "previous"
    previous.mkdir(exist_ok=True)
    for name in plan["files"]:
        staged, live = stage / name, cfg.data_dir / name
        if not staged.exists():
            continue  # this file was swapped before the interruption
        for suffix in ("", *SIDE_SUFFIXES):
            old = live.with_name(live.name + suffix)
            if old.exists():
                os.replace(old, previous / old.name)
        os.replace(staged, live)
    fsync_path(cfg.data_dir)
    marker.unlink()
    fsync_path(cfg.data_dir)
    shutil.rmtree(stage, ignore_errors=True)
    return True
