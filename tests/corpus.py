"""Test data the tests make themselves: synthetic documents and a directly populated store.

`write_corpus` writes distinct documents from a seeded vocabulary. `populate` fills a store
the way the indexer would (vectors file first, fsync, then one SQLite transaction per
batch), bypassing the embedding step so that memory tests at 100k rows take seconds.
A large store is made once per process and copied after that (`populate`'s template).
`check_exactly_once` is the end-of-test audit used after crash tests.
"""

from __future__ import annotations

import atexit
import random
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from roxi_mp.commit import commit
from roxi_mp.config import Config
from roxi_mp.embedders import make_embedder
from roxi_mp.store import Store
from roxi_mp.vectors import VectorWriter, read_header

WORDS = ("synovial joint inflammation cartilage erosion tendon ligament bone marrow antibody "
         "cytokine interleukin tumour necrosis factor fatigue stiffness morning swelling pain "
         "kidney lung skin rash fever ulcer nerve muscle weakness vessel artery vein clot "
         "dose tablet injection infusion monitoring blood count liver enzyme vaccine infection "
         "pregnancy child elderly exercise physiotherapy diet weight smoking alcohol sleep").split()


def write_corpus(root: Path, *, docs: int, words: int, seed: int = 1) -> list[Path]:
    """`docs` distinct documents of about `words` words each under `root`."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(docs):
        sentences = []
        for _ in range(max(1, words // 12)):
            sentences.append(" ".join(rng.choice(WORDS) for _ in range(11)).capitalize() + ".")
        path = root / f"doc-{i:05d}.md"
        path.write_text(f"# Document {i}\n\nIdentifier token{i}x{seed}. " + " ".join(sentences) + "\n")
        paths.append(path)
    return paths


#: stores of at least this many rows are made once per process, then copied (100k rows took
#: 7-9 s to make, a copy of its two files ~0.1 s; four sleep tests each wanted one)
TEMPLATE_FROM_ROWS = 10_000
_templates: dict[tuple, Path] = {}


def populate(cfg: Config, *, rows: int, batch: int = 20_000, seed: int = 0,
             vectors: Callable[[np.random.Generator, int, int], np.ndarray] | None = None) -> None:
    """A store with `rows` indexed chunks, through the commit protocol: random unit vectors,
    or what `vectors(rng, n, dim)` makes. A large store of random vectors made in a new data
    directory is a copy of the first one made alike in this process."""
    model = make_embedder(cfg)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    fresh = not cfg.db_path.exists() and not cfg.vectors_path.exists()
    if vectors is not None or rows < TEMPLATE_FROM_ROWS or not fresh:
        _populate(cfg, model, rows=rows, batch=batch, seed=seed, vectors=vectors)
        return
    key = (rows, batch, seed, model.model_id, model.dim)
    if key not in _templates:
        _populate(cfg, model, rows=rows, batch=batch, seed=seed, vectors=None)
        if Path(f"{cfg.db_path}-wal").exists():
            return  # not all in the database file: made anew next time
        root = Path(tempfile.mkdtemp(prefix="roxi-populate-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        shutil.copyfile(cfg.db_path, root / "db")
        shutil.copyfile(cfg.vectors_path, root / "vectors")
        _templates[key] = root
        return
    root = _templates[key]
    shutil.copyfile(root / "vectors", cfg.vectors_path)
    shutil.copyfile(root / "db", cfg.db_path)


def _populate(cfg: Config, model, *, rows: int, batch: int, seed: int,
              vectors: Callable[[np.random.Generator, int, int], np.ndarray] | None) -> None:
    rng = np.random.default_rng(seed)
    with Store(cfg.db_path) as store:
        store.ensure_model(model.model_id, model.dim)
        with VectorWriter(cfg.vectors_path, dim=model.dim, model_id=model.model_id) as writer:
            writer.recover(store.committed_rows())
            done = 0
            doc = 0
            while done < rows:
                n = min(batch, rows - done)
                doc += 1
                store.add_document(content_hash=f"synthetic-{seed}-{doc}", source=f"synthetic/{doc}",
                                   title=f"Synthetic {doc}", size=n,
                                   chunks=((i, f"chunk {done + i}", f"h{done + i}") for i in range(n)))
                ids = [r[0] for r in store.conn.execute(
                    "SELECT id FROM chunks WHERE row IS NULL ORDER BY id")]
                if vectors is None:
                    vecs = rng.standard_normal((n, model.dim), dtype=np.float32)
                    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
                else:
                    vecs = vectors(rng, n, model.dim)
                commit(store, writer, ids, vecs)
                done += n


def check_exactly_once(cfg: Config, model=None) -> int:
    """Every chunk indexed once, rows 0..n-1 each used once, and each row holds its chunk's vector
    (as `model` embeds it: by default the configured backend)."""
    model = model or make_embedder(cfg)
    with Store(cfg.db_path) as store:
        stats = store.stats()
        assert stats.indexed == stats.chunks, stats
        pairs = list(store.iter_rows())
        rows = sorted(r for _, r in pairs)
        assert rows == list(range(stats.chunks)), "rows are not exactly 0..n-1"
        assert store.committed_rows() == stats.chunks
        texts = dict(store.conn.execute("SELECT id, text FROM chunks"))
        check_lexical_index(store)
    header = read_header(cfg.vectors_path)
    assert header.rows == stats.chunks
    data = np.memmap(cfg.vectors_path, dtype="<f2", mode="r", offset=81, shape=(header.rows, model.dim))
    try:
        ids = [cid for cid, _ in pairs]
        expected = model.encode([texts[cid] for cid in ids]).astype(np.float16)
        stored = np.asarray(data[[r for _, r in pairs]])
        # exact for local models; a float round trip through JSON may move the last fp16 bit
        assert np.allclose(stored.astype(np.float32), expected.astype(np.float32), atol=2e-3), \
            "a row does not hold its chunk's vector"
    finally:
        del data
    return stats.chunks


def check_lexical_index(store: Store) -> None:
    """The lexical index and the chunk counts agree with the chunks table (both are kept by
    triggers in the transactions that change chunks, so a crash anywhere leaves them so)."""
    # FTS5 compares its index with the content table, and raises if they differ.
    store.conn.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
    counted = dict(store.conn.execute("SELECT state, count(*) FROM chunks GROUP BY state"))
    kept = {state: n for state, n in store.conn.execute("SELECT state, n FROM chunk_counts") if n}
    assert kept == counted, f"chunk_counts {kept} != chunks {counted}"
