"""Backups of the store: online snapshots taken while ingest runs, checked before trusted.

A backup is `<root>/<UTC timestamp>/`: a self-contained database copy (SQLite's online
backup API, journal mode DELETE), the snapshot's rows of the vectors file with the header
cut to exactly those rows, and `manifest.json` (counts, model, size and sha256 per file).
The database copy is the consistent point: rows below its committed_rows never change in
the append-only vectors file, so copying them afterwards, while the indexer commits, still
gives a matching pair. It is built in `<name>.partial/` and renamed once durable, so a
crash never leaves a listed half backup. A store that never recorded a model is backed up
as its database alone (no model, dim or `vectors.faiss` in the manifest); restoring it
stages the header-only vectors file the indexer would create for the configured model, so
the swap (roxi_mp.staging, crash-safe, under the data dir's lock) always installs both.

The vectors file copied is the one the database copy names (its meta vectors_epoch: a
compaction moves the store to a new file); in the backup it is always `vectors.faiss`,
and the copy's epoch is set to 0 to match, so a restore installs a consistent pair. If a
compaction switched files between the database copy and the file's opening, the old file
is gone: the backup is taken again, once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from . import migrations
from .backup_manifest import FORMAT_VERSION, KINDS, BackupError, Manifest
from .compact import is_vectors_file
from .config import Config
from .errors import BadInput, StoreError
from .lock import DataDirLock
from .staging import checkpoint, complete_swap, fsync_path, stage_dir, swap_in
from .store import Store
from .vectors import HEADER_BYTES, VectorWriter, model_tag, read_header

log = logging.getLogger("roxi.backup")

#: file names inside a backup directory (the store's two keep their data-dir names)
DB, VECTORS, MANIFEST = "roxi.sqlite3", "vectors.faiss", "manifest.json"
#: suffix of a backup being written (or deleted); never listed
PARTIAL = ".partial"
#: a .partial directory untouched this long, in seconds, belongs to a dead run
STALE_PARTIAL_SECONDS = 3600.0
#: backup directory names: the snapshot's UTC time, so names sort in time order
STAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"
#: read size when copying or hashing, in bytes (1 MiB)
BLOCK_BYTES = 1 << 20
#: the staging directory restore builds in (roxi_mp.staging.stage_dir)
STAGE = "restore"
#: the files of a backup, by whether its store has recorded a model
FILES = {True: (DB, VECTORS), False: (DB,)}

Progress = Callable[[int, int], None]
Meter = Callable[[int], None]


class _Vanished(BackupError):
    """The snapshot's vectors file is gone (a compaction switched meanwhile): take it again."""


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    manifest: Manifest
    bytes: int


def create(cfg: Config, root: Path, *, kind: str = "manual", progress: Progress | None = None) -> Path:
    """Snapshot the live store into a new backup under `root`; returns its directory."""
    if kind not in KINDS:
        raise BadInput(f"backup kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not cfg.db_path.is_file():
        raise BackupError(f"{cfg.db_path}: no store to back up")
    now, partial = _start_partial(Path(root))
    try:
        try:
            facts, files = _snapshot(cfg, partial, progress)
        except _Vanished as exc:
            log.info("%s; taking the backup again", exc)
            for entry in partial.iterdir():
                entry.unlink()
            facts, files = _snapshot(cfg, partial, progress)
        rows, model_id, dim = facts["rows"], facts["model_id"], facts["dim"]
        manifest = Manifest(format_version=FORMAT_VERSION, created=now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                            kind=kind, model_id=model_id, dim=dim, rows=rows, chunks=facts["chunks"],
                            indexed=facts["indexed"], documents=facts["documents"], files=files)
        (partial / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
        for durable in (partial / MANIFEST, partial):
            fsync_path(durable)
        final = partial.with_name(partial.name[:-len(PARTIAL)])
        os.rename(partial, final)
        fsync_path(final.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log.info("backup %s: %d rows, %d chunks (%s)", final, rows, facts["chunks"], kind)
    return final


def _snapshot(cfg: Config, partial: Path, progress: Progress | None) -> tuple[dict, dict]:
    """The database copy and its vectors into `partial`: (the copy's facts, the files' entries)."""
    with Store.open(cfg, migrate=False) as live:
        live.backup_to(partial / DB)
    epoch = _reset_epoch(partial / DB)  # the file is vectors.faiss in the backup: epoch 0
    checkpoint(partial / DB)  # one self-contained file, readable with no -wal or -shm beside it
    facts = _db_facts(partial / DB, integrity=False)  # the copy, not the live db: it is the snapshot
    _check_facts(facts, cfg.db_path)
    rows, model_id, dim = facts["rows"], facts["model_id"], facts["dim"]
    vectors_bytes = HEADER_BYTES + rows * 2 * dim if model_id is not None else 0
    meter = _meter(progress, 2 * vectors_bytes + (partial / DB).stat().st_size)
    if model_id is not None:
        _copy_vectors(cfg.vectors_file(epoch), partial / VECTORS, rows=rows, dim=dim, model_id=model_id,
                      meter=meter)
    fsync_path(partial / DB)
    files = {name: {"bytes": (partial / name).stat().st_size, "sha256": _stream(partial / name, meter)}
             for name in FILES[model_id is not None]}
    return facts, files


def _reset_epoch(db: Path) -> int:
    """Set a database copy's vectors epoch to 0 (its file is vectors.faiss); return the old one."""
    conn = sqlite3.connect(str(db), isolation_level=None)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='vectors_epoch'").fetchone()
        if row is not None and row[0] != "0":
            conn.execute("UPDATE meta SET value='0' WHERE key='vectors_epoch'")
        return int(row[0]) if row is not None else 0
    finally:
        conn.close()


def list_backups(root: Path) -> list[BackupInfo]:
    """Complete backups under `root`, oldest first; anything without a readable manifest is skipped."""
    root = Path(root)
    found = []
    for entry in root.iterdir() if root.is_dir() else ():
        if entry.name.endswith(PARTIAL) or not entry.is_dir():
            continue
        try:
            manifest = _read_manifest(entry)
        except (BackupError, OSError) as exc:
            log.debug("not a backup, skipped: %s", exc)
            continue
        found.append(BackupInfo(path=entry, manifest=manifest,
                                bytes=sum(f["bytes"] for f in manifest.files.values())))
    found.sort(key=lambda b: (b.manifest.created, b.path.name))
    return found


def verify(path: Path, *, progress: Progress | None = None) -> Manifest:
    """Check a backup completely: manifest, sizes and checksums, database, row consistency."""
    path = Path(path)
    manifest = _read_manifest(path)
    expected = FILES[manifest.model_id is not None]
    if set(manifest.files) != set(expected):
        raise BackupError(f"{path / MANIFEST}: lists files {sorted(manifest.files)}, expected {list(expected)}")
    meter = _meter(progress, sum(f["bytes"] for f in manifest.files.values()))
    for name in expected:
        want = manifest.files[name]
        if (path / name).is_symlink():  # it would read (and restore) a file from anywhere
            raise BackupError(f"{path / name}: is a symbolic link; a backup holds its own files")
        size = (path / name).stat().st_size if (path / name).is_file() else None
        if size != want["bytes"]:
            raise BackupError(f"{path / name}: {'missing' if size is None else f'{size} bytes'}, "
                              f"the manifest says {want['bytes']} bytes")
        if _stream(path / name, meter) != want["sha256"]:
            raise BackupError(f"{path / name}: checksum mismatch (sha256 differs from the manifest)")
    facts = _db_facts(path / DB, integrity=True)
    _check_facts(facts, path / DB)
    for key in ("rows", "model_id", "dim", "chunks", "indexed", "documents"):
        if facts[key] != getattr(manifest, key):
            raise BackupError(f"{path / DB}: {key} is {facts[key]!r}, the manifest says {getattr(manifest, key)!r}")
    if manifest.model_id is not None:
        _check_vectors(path / VECTORS, rows=manifest.rows, dim=manifest.dim, model_id=manifest.model_id,
                       exact=True)
    return manifest


def prune(root: Path, *, keep: int) -> list[Path]:
    """Delete all but the newest `keep` backups; returns the ones removed, oldest first."""
    if type(keep) is not int or keep < 1:
        raise BadInput(f"keep must be an integer >= 1, got {keep!r}")
    doomed = [b.path for b in list_backups(root)][:-keep]
    for path in doomed:
        # Renamed first: a crash mid-delete leaves an unlisted .partial, never a half backup.
        trash = path.with_name(path.name + PARTIAL)
        os.rename(path, trash)
        fsync_path(Path(root))
        shutil.rmtree(trash, ignore_errors=True)
        log.info("pruned backup %s", path)
    return doomed


def restore(cfg: Config, path: Path, *, progress: Progress | None = None) -> Manifest:
    """Replace the live store by a verified backup; the replaced files go to `previous/`."""
    path = Path(path)
    # Progress covers two passes over the files: verifying, then copying.
    first = None if progress is None else (lambda done, total: progress(done, 2 * total))
    manifest = verify(path, progress=first)  # before anything is locked or touched
    total = sum(f["bytes"] for f in manifest.files.values())
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    lock = DataDirLock(cfg.lock_path, purpose="restore")
    lock.acquire()  # AlreadyRunning names the supervisor (or reembed) holding the directory
    try:
        complete_swap(cfg)  # an interrupted swap may still need its staging directory
        stage = stage_dir(cfg, STAGE)
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        try:
            meter = _meter(None if progress is None else
                           (lambda done, _: progress(total + done, 2 * total)), total)
            for name, want in manifest.files.items():
                # Hashed again while copying: the backup may have changed since verify read it.
                if _stream(path / name, meter, copy_to=stage / name) != want["sha256"]:
                    raise BackupError(f"{path / name}: checksum mismatch (changed while being restored)")
            if manifest.model_id is None:
                from .embedders import make_embedder  # numpy: the supervisor lists backups, never restores

                model = make_embedder(cfg)  # cheap: only its id and dim, no weights
                VectorWriter(stage / VECTORS, dim=model.dim, model_id=model.model_id).close()
            _reset_epoch(stage / DB)  # installed as vectors.faiss (a backup's own copy says 0 already)
            fsync_path(stage)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        previous = swap_in(cfg, stage)
        for entry in cfg.data_dir.glob("vectors.*.faiss"):  # the replaced store's compacted file
            if is_vectors_file(entry.name):
                os.replace(entry, previous / entry.name)
    finally:
        lock.release()
    log.info("restored %s (%d rows, %d chunks) into %s", path, manifest.rows, manifest.chunks, cfg.data_dir)
    return manifest


# --- helpers ------------------------------------------------------------------------------
def _meter(progress: Progress | None, total: int) -> Meter:
    """A byte counter reporting (done, total) to an optional progress callback."""
    done = 0

    def add(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)
    return add


def _start_partial(root: Path) -> tuple[datetime, Path]:
    """A fresh `<timestamp>.partial` directory, after removing those of dead runs."""
    root.mkdir(parents=True, exist_ok=True)
    for entry in root.glob("*" + PARTIAL):
        with contextlib.suppress(OSError):  # another process may remove it first
            if entry.is_dir() and entry.stat().st_mtime < time.time() - STALE_PARTIAL_SECONDS:
                shutil.rmtree(entry)
                log.info("removed stale partial backup %s", entry)
    while True:
        now = datetime.now(timezone.utc)
        name = now.strftime(STAMP_FORMAT)
        if not (root / name).exists():
            with contextlib.suppress(FileExistsError):
                (root / (name + PARTIAL)).mkdir()
                return now, root / (name + PARTIAL)
        time.sleep(1e-6)  # another backup took this microsecond: take the next one


def _read_manifest(path: Path) -> Manifest:
    file = path / MANIFEST
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BackupError(f"{file}: cannot read the manifest ({exc})") from None
    return Manifest.from_json(text, path=file)


def _db_facts(db: Path, *, integrity: bool) -> dict:
    """What a database copy says about itself (counts, model, the row column's shape), read-only."""
    with open(db, "rb") as f:
        head = f.read(100)
    if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
        raise BackupError(f"{db}: not a SQLite database")
    if 2 in head[18:20]:
        raise BackupError(f"{db}: database is in WAL mode; a backup must be one self-contained file")
    try:
        # Read-only: checking a backup must never write to it, nor leave a journal beside it.
        conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            problems = [r[0] for r in conn.execute("PRAGMA integrity_check(5)")] if integrity else ["ok"]
            if problems != ["ok"]:
                raise BackupError(f"{db}: database is corrupt: {'; '.join(map(str, problems))}")
            meta = dict(conn.execute("SELECT key, value FROM meta"))
            facts = {"schema": int(meta.get("schema_version", "0")),
                     "rows": int(meta.get("committed_rows", "0")),
                     "model_id": meta.get("model_id"), "dim": int(meta["dim"]) if "dim" in meta else None}
            facts.update(zip(("documents", "chunks", "indexed", "with_row", "distinct_rows", "min_row",
                              "max_row"), conn.execute(
                "SELECT (SELECT count(*) FROM documents), count(*), count(CASE WHEN state='indexed' THEN 1 END), "
                "count(row), count(DISTINCT row), min(row), max(row) FROM chunks").fetchone()))
        finally:
            conn.close()
    except (sqlite3.Error, ValueError) as exc:
        raise BackupError(f"{db}: database is corrupt or not a roxi store ({exc})") from None
    return facts


def _check_facts(facts: dict, db: Path) -> None:
    """Rows must be exactly 0..committed_rows-1, one per indexed chunk, under a recorded model."""
    rows = facts["rows"]
    if facts["schema"] > migrations.LATEST:
        raise BackupError(f"{db}: schema {facts['schema']} is newer than this roxi-mp reads ({migrations.LATEST})")
    if (facts["model_id"] is None) != (facts["dim"] is None) or (facts["model_id"] is None and rows):
        raise BackupError(f"{db}: {rows} committed rows under model {facts['model_id']!r}, "
                          f"dim {facts['dim']!r}")
    shape = (facts["with_row"], facts["distinct_rows"], facts["min_row"], facts["max_row"])
    # Rows of dropped chunks (dead versions) are tombstones until a compaction: they hold rows too.
    if facts["indexed"] > rows or shape != ((rows, rows, 0, rows - 1) if rows else (0, 0, None, None)):
        raise BackupError(f"{db}: inconsistent rows: committed_rows {rows}, {facts['indexed']} chunks "
                          f"indexed, {shape[0]} with a row ({shape[1]} distinct, {shape[2]}..{shape[3]})")


def _check_vectors(path: Path, *, rows: int, dim: int, model_id: str, exact: bool) -> None:
    """The file holds `rows` rows (exactly, or at least) of `model_id`'s vectors."""
    try:
        header = read_header(path)
    except StoreError as exc:
        raise BackupError(str(exc)) from None  # read_header's message already names the file
    if header.dim != dim or header.model_tag != model_tag(model_id):
        raise BackupError(f"{path}: holds dim {header.dim} vectors of model tag {header.model_tag:#010x}, "
                          f"expected {model_id!r} (dim {dim})")
    size, need = path.stat().st_size, HEADER_BYTES + rows * 2 * dim
    if size < need or exact and (size, header.rows, header.codes_bytes) != (need, rows, rows * 2 * dim):
        raise BackupError(f"{path}: holds {(size - HEADER_BYTES) // (2 * dim)} rows (header: {header.rows}) "
                          f"but the store committed {rows}")


def _copy_vectors(live: Path, copy: Path, *, rows: int, dim: int, model_id: str, meter: Meter) -> None:
    """The snapshot's rows of the live file: its first rows only, as the indexer appends past them."""
    if not live.exists() and rows == 0:
        VectorWriter(copy, dim=dim, model_id=model_id).close()  # what the indexer would create
        return meter(HEADER_BYTES)
    try:
        _check_vectors(live, rows=rows, dim=dim, model_id=model_id, exact=False)
        _stream(live, meter, copy_to=copy, limit=HEADER_BYTES + rows * 2 * dim)
    except (FileNotFoundError, BackupError):
        if not live.exists():  # a compaction switched files after the database copy
            raise _Vanished(f"{live}: missing, but the store committed {rows} rows") from None
        raise
    # The copied header may count rows past the snapshot (or fewer, not yet published).
    with VectorWriter(copy, dim=dim, model_id=model_id) as writer:
        writer.recover(rows)  # exactly `rows` in the header and the file, fsynced


def _stream(src: Path, meter: Meter, *, copy_to: Path | None = None, limit: int | None = None) -> str:
    """sha256 of a file (or its first `limit` bytes); with `copy_to`, also copied and fsynced."""
    import hashlib  # here, not at import: libcrypto is 3.6 MB of a process asleep
    digest, left = hashlib.sha256(), limit
    with open(src, "rb") as fin, (open(copy_to, "wb") if copy_to else contextlib.nullcontext()) as fout:
        while block := fin.read(BLOCK_BYTES if left is None else min(BLOCK_BYTES, left)):
            digest.update(block)
            if fout is not None:
                fout.write(block)
            if left is not None:
                left -= len(block)
            meter(len(block))
        if fout is not None:
            fout.flush()
            os.fsync(fout.fileno())
    return digest.hexdigest()

