"""Stores with a distinct vector per chunk text, and the audit a compaction must pass.

Shared by the compaction unit tests, the integration test and tests/bench/bench_compact.py.
`vec(text)` is a chunk's vector (a function of its text alone, so a copied vector is also
its own text's); `audit(cfg)` checks what acceptance 4 names: one vectors file, that of the
current epoch; rows dense 0..n-1, one per chunk; the file exactly header + n rows; and
every chunk's row holding its own text's vector.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from roxi_mp.commit import commit
from roxi_mp.compact import is_vectors_file
from roxi_mp.config import Config
from roxi_mp.store import Store
from roxi_mp.vectors import HEADER_BYTES, VectorWriter, read_header


Embed = Callable[[list[str]], np.ndarray]


def vec(text: str, dim: int) -> np.ndarray:
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)
    x = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return (x / np.linalg.norm(x)).astype(np.float16)


def distinct_vectors(dim: int) -> Embed:
    """A distinct vector per text, fast (unit tests, benchmarks)."""
    return lambda texts: np.stack([vec(t, dim) for t in texts]) if texts else np.zeros((0, dim), np.float16)


def hashing_vectors(dim: int) -> Embed:
    """What a running system's hashing embedder makes of each text (integration tests)."""
    from roxi_mp.embedders import HashingEmbedder

    model = HashingEmbedder(dim=dim)
    return lambda texts: model.encode(texts).astype(np.float16)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def put(store: Store, key: str, texts: list[str]):
    body = "\n".join(texts)
    return store.put_document(key=key, content_hash=digest(body), source=key, title=key, size=len(body),
                              chunks=[(i, t, digest(t)) for i, t in enumerate(texts)])


def texts_of(key: str, n: int, version: int = 1) -> list[str]:
    return [f"{key} v{version} chunk {i}: some words about {key}" for i in range(n)]


def commit_pending(cfg: Config, *, model_id: str, dim: int, batch: int = 50_000, embed: Embed | None = None) -> int:
    """Commit a vector for every pending or copy chunk (what embedders and the indexer do)."""
    embed = embed or distinct_vectors(dim)
    done = 0
    with Store(cfg.db_path) as store:
        path = cfg.vectors_file(store.vectors_epoch())
        with VectorWriter(path, dim=dim, model_id=model_id) as w:
            w.recover(store.committed_rows())
            while True:
                rows = store.conn.execute("SELECT id, text FROM chunks WHERE row IS NULL AND state IN "
                                          "('pending', 'copy') ORDER BY id LIMIT ?", (batch,)).fetchall()
                if not rows:
                    return done
                commit(store, w, [r[0] for r in rows], embed([t for _, t in rows]))
                done += len(rows)


def vectors_files(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.iterdir() if is_vectors_file(p.name))


def audit(cfg: Config, *, dim: int, strays_allowed: bool = False, embed: Embed | None = None) -> dict:
    """Raise AssertionError on any inconsistency; return a few facts for further checks."""
    embed = embed or distinct_vectors(dim)
    with Store(cfg.db_path) as store:
        epoch, rows = store.vectors_epoch(), store.committed_rows()
        found = store.conn.execute("SELECT row, text, state FROM chunks WHERE row IS NOT NULL ORDER BY row").fetchall()
        dead = store.dead_rows()
    path = cfg.vectors_file(epoch)
    if not strays_allowed:
        assert vectors_files(cfg.data_dir) == [path.name], vectors_files(cfg.data_dir)
    assert [r[0] for r in found] == list(range(rows)), "rows are not dense 0..n-1, one per chunk"
    assert path.stat().st_size == HEADER_BYTES + rows * 2 * dim, "file length is not header + rows"
    assert read_header(path).rows == rows
    data = np.memmap(path, dtype="<f2", mode="r", offset=HEADER_BYTES, shape=(rows, dim)) if rows else np.zeros((0, dim))
    for start in range(0, rows, 20_000):
        part = found[start:start + 20_000]
        want = embed([t for _, t, _ in part])
        bad = np.flatnonzero(~(np.asarray(data[start:start + len(part)]) == want).all(axis=1))
        assert not len(bad), f"row {start + bad[0]} does not hold its chunk's vector"
    return {"epoch": epoch, "rows": rows, "dead": dead, "path": path}


def unit_config(make_config: Callable[..., Config], **overrides: Any) -> Iterator[Config]:
    """The body of a `cfg` fixture: a config with its data and run directories made."""
    made = make_config(**overrides)
    made.data_dir.mkdir(parents=True, exist_ok=True)
    made.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    yield made
    if not str(made.run_dir).startswith(str(made.data_dir)):  # a fallback run dir under /tmp
        shutil.rmtree(made.run_dir, ignore_errors=True)
