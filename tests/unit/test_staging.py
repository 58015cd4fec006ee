"""The store swap rolls forward from any interruption and never mixes old and new files."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from roxi_mp.staging import MARKER, complete_swap, stage_dir, swap_in


def make_db(path, value: str) -> None:
    conn = sqlite3.connect(str(path))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (v TEXT)")
    conn.execute("INSERT INTO t VALUES (?)", (value,))
    conn.commit()
    conn.close()


def read_db(path) -> str:
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute("SELECT v FROM t").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def stores(make_config):
    cfg = make_config()
    cfg.data_dir.mkdir(parents=True)
    make_db(cfg.db_path, "old")
    cfg.vectors_path.write_bytes(b"old vectors")
    stage = stage_dir(cfg, "test")
    stage.mkdir(parents=True)
    make_db(stage / "roxi.sqlite3", "new")
    (stage / "vectors.faiss").write_bytes(b"new vectors")
    return cfg, stage


def test_swap_in_replaces_both_files_and_keeps_the_old_ones(stores):
    cfg, stage = stores
    previous = swap_in(cfg, stage)
    assert read_db(cfg.db_path) == "new" and cfg.vectors_path.read_bytes() == b"new vectors"
    assert read_db(previous / "roxi.sqlite3") == "old"
    assert (previous / "vectors.faiss").read_bytes() == b"old vectors"
    assert not (cfg.data_dir / MARKER).exists() and not stage.exists()
    assert not (cfg.data_dir / "roxi.sqlite3-wal").exists()  # no old WAL next to the new db


@pytest.mark.parametrize("done_before_crash", [0, 1, 2, 3])
def test_an_interrupted_swap_rolls_forward(stores, done_before_crash):
    """Crash after k of the steps (old db out, new db in, old vectors out, new vectors in)."""
    cfg, stage = stores
    (cfg.data_dir / MARKER).write_text(json.dumps({"stage": str(stage),
                                                   "files": ["roxi.sqlite3", "vectors.faiss"]}))
    previous = cfg.data_dir / "previous"
    previous.mkdir()
    steps = [lambda: os.replace(cfg.db_path, previous / "roxi.sqlite3"),
             lambda: os.replace(stage / "roxi.sqlite3", cfg.db_path),
             lambda: os.replace(cfg.vectors_path, previous / "vectors.faiss"),
             lambda: os.replace(stage / "vectors.faiss", cfg.vectors_path)]
    for step in steps[:done_before_crash]:
        step()
    assert complete_swap(cfg) is True
    assert read_db(cfg.db_path) == "new" and cfg.vectors_path.read_bytes() == b"new vectors"
    assert read_db(previous / "roxi.sqlite3") == "old"
    assert complete_swap(cfg) is False  # nothing left to do


def test_incomplete_stage_is_refused_before_anything_moves(stores):
    cfg, stage = stores
    (stage / "vectors.faiss").unlink()
    with pytest.raises(FileNotFoundError):
        swap_in(cfg, stage)
    assert read_db(cfg.db_path) == "old" and not (cfg.data_dir / MARKER).exists()
