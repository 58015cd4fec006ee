"""`roxi reembed --model NAME`: rebuild every vector under another embedding model.

The live store is never touched until the new one is complete. A copy of the database
(SQLite's online backup) is made in `staging/reembed/`, every chunk there is reset to
pending under the new model id, and the chunks are embedded and committed into a new
vectors file through the same commit protocol the indexer uses. Interrupted (Ctrl-C,
kill -9, power loss), it resumes where it stopped on the next run. Only when every chunk
has a vector is the staged store swapped in (roxi_mp.staging, crash-safe), the old one
kept in `previous/` (with the vectors file of the live store's epoch: the staged store
starts again at epoch 0, `vectors.faiss`, without the dead versions' chunks a compaction
would have removed). It runs with the system stopped and holds the data directory's lock
meanwhile, so neither a supervisor nor `roxi ingest` can change the store under it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .commit import commit
from .compact import is_vectors_file
from .config import Config
from .embedders import EmbedError, make_embedder
from .errors import BadInput, StoreError
from .lock import DataDirLock
from .staging import complete_swap, stage_dir, swap_in
from .store import DROPPED, FAILED, Store
from .vectors import VectorWriter

log = logging.getLogger("roxi.reembed")

STAGE = "reembed"


@dataclass
class Result:
    model_id: str
    dim: int
    chunks: int
    embedded: int  # in this run (a resumed run embeds only what was left)


def reembed(cfg: Config, backend: str, *, batch_size: int | None = None,
            progress: Callable[[int, int], None] | None = None) -> Result:
    lock = DataDirLock(cfg.lock_path, purpose="reembed")
    lock.acquire()  # AlreadyRunning names the supervisor (or other reembed) holding it
    try:
        complete_swap(cfg)
        model = make_embedder(cfg, backend, fresh=True)
        with Store.open(cfg) as live:
            current = live.model()
        if current == (model.model_id, model.dim):
            raise BadInput(f"the store already uses {model.model_id} (dim {model.dim})")
        model.load()
        stage = _prepare(cfg, model.model_id, model.dim)
        result = _embed(stage, model, batch_size or cfg.embedder.batch_size, progress)
        previous = swap_in(cfg, stage)
        for entry in cfg.data_dir.glob("vectors.*.faiss"):  # the replaced store's compacted file
            if is_vectors_file(entry.name):
                os.replace(entry, previous / entry.name)
        log.info("store now embedded with %s (dim %d)", result.model_id, result.dim)
        return result
    finally:
        lock.release()


def _prepare(cfg: Config, model_id: str, dim: int):
    """The staging directory, created from a copy of the live store or resumed as it is."""
    stage = stage_dir(cfg, STAGE)
    plan = stage / "plan.json"
    if plan.exists() and json.loads(plan.read_text()) != {"model_id": model_id, "dim": dim}:
        for name in ("roxi.sqlite3", "roxi.sqlite3-wal", "roxi.sqlite3-shm", "vectors.faiss", "plan.json"):
            (stage / name).unlink(missing_ok=True)  # an abandoned reembed to another model
    if not plan.exists():
        stage.mkdir(parents=True, exist_ok=True)
        for name in ("roxi.sqlite3", "roxi.sqlite3-wal", "roxi.sqlite3-shm", "vectors.faiss"):
            (stage / name).unlink(missing_ok=True)
        with Store.open(cfg) as live:
            live.backup_to(stage / "roxi.sqlite3")
        with Store(stage / "roxi.sqlite3") as staged:
            staged.reset_for_model(model_id, dim)
            _forget_dead(staged)
        plan.write_text(json.dumps({"model_id": model_id, "dim": dim}))  # written last: the copy is whole
    return stage


def _forget_dead(staged: Store) -> None:
    """No row survives a reembed, so the dead versions' chunks (tombstones until a compaction)
    can go, and the epoch restarts at 0: the staged vectors file is `vectors.faiss`."""
    with staged.transaction() as conn:
        conn.execute("DELETE FROM chunks WHERE state='dropped'")
        conn.execute("DELETE FROM documents WHERE status='dead' AND NOT EXISTS "
                     "(SELECT 1 FROM chunks c WHERE c.doc_id = documents.id) AND version < "
                     "(SELECT max(o.version) FROM documents o WHERE o.key = documents.key)")
        conn.execute("UPDATE meta SET value='0' WHERE key='vectors_epoch'")


def _embed(stage, model, batch_size: int, progress: Callable[[int, int], None] | None) -> Result:
    with Store(stage / "roxi.sqlite3") as staged, \
            VectorWriter(stage / "vectors.faiss", dim=model.dim, model_id=model.model_id) as writer:
        writer.recover(staged.committed_rows())
        staged.conn.execute("UPDATE chunks SET state='pending', error=NULL WHERE state='failed'")
        total = staged.stats().chunks
        embedded = failed = 0
        while True:
            rows = staged.conn.execute("SELECT id, text FROM chunks WHERE row IS NULL AND state NOT IN (?, ?) "
                                       "ORDER BY id LIMIT ?", (FAILED, DROPPED, batch_size)).fetchall()
            if not rows:
                break
            ids, texts = [r[0] for r in rows], [r[1] for r in rows]
            done, bad = _encode_isolating(model, ids, texts)
            for cid, error in bad:
                staged.conn.execute("UPDATE chunks SET state='failed', error=? WHERE id=?", (error, cid))
            failed += len(bad)
            if done:
                commit(staged, writer, [cid for cid, _ in done], np.stack([v for _, v in done]))
                embedded += len(done)
            if progress is not None:
                progress(staged.committed_rows(), total)
        if failed:
            raise StoreError(f"{failed} chunks could not be embedded with {model.model_id}; the current "
                             f"store is unchanged. Run `roxi reembed` again to retry them (it resumes)")
        if staged.committed_rows() != total:
            raise StoreError(f"reembed stopped at {staged.committed_rows()} of {total} chunks")
    return Result(model.model_id, model.dim, total, embedded)


def _encode_isolating(model, ids: list[int], texts: list[str]):
    """Embed a batch; if it fails, embed its chunks one by one so one bad chunk fails alone."""
    try:
        return list(zip(ids, model.encode(texts))), []
    except EmbedError as exc:
        if len(ids) == 1:
            return [], [(ids[0], str(exc)[:500])]
    done, bad = [], []
    for cid, text in zip(ids, texts):
        try:
            done.append((cid, model.encode([text])[0]))
        except EmbedError as exc:
            bad.append((cid, str(exc)[:500]))
    return done, bad
