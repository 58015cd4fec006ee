"""Everything else that opens the vectors file follows the epoch a compaction moves on:
backups (also one taken while a compaction switches), restore, reembed's staging, the
approximate-index build."""

from __future__ import annotations

import sqlite3
import time

import pytest

from roxi_mp import ann_build, compact, compact_swap, reembed
from roxi_mp.backup import create, restore, verify
from roxi_mp.config import Config
from roxi_mp.store import Store
from tests.compact_audit import audit, unit_config, vectors_files
from tests.unit.test_compact import build, compact_fully
from tests.unit.test_roles import DIM, FAST


@pytest.fixture
def cfg(make_config):
    yield from unit_config(make_config, **FAST)


def test_a_store_with_tombstones_backs_up_and_verifies(cfg: Config, tmp_path) -> None:
    build(cfg)  # 120 dead rows: dropped chunks that hold rows
    path = create(cfg, tmp_path / "backups")
    manifest = verify(path)
    assert manifest.rows == 300 and manifest.indexed == 180


def test_a_compacted_store_backs_up_and_restores_as_epoch_0(cfg: Config, make_config, tmp_path) -> None:
    build(cfg)
    compact_fully(cfg)
    path = create(cfg, tmp_path / "backups")
    assert verify(path).rows == 180
    other = make_config(data_dir=tmp_path / "other" / "data")
    restore(other, path)
    facts = audit(other, dim=DIM)
    assert (facts["epoch"], facts["rows"], facts["path"].name) == (0, 180, "vectors.faiss")
    # Restored over the compacted store itself: its epoch-1 file goes to previous/ with its database.
    restore(cfg, path)
    assert audit(cfg, dim=DIM)["epoch"] == 0 and vectors_files(cfg.data_dir) == ["vectors.faiss"]
    assert (cfg.data_dir / "previous" / "vectors.1.faiss").exists()


def test_a_backup_whose_vectors_file_a_switch_removed_is_taken_again(cfg: Config, monkeypatch,
                                                                     tmp_path) -> None:
    build(cfg)
    compact.run(cfg, 1)
    real = Store.backup_to
    switched = []

    def backup_then_switch(self, target):
        real(self, target)
        if not switched:  # the switch lands between the database copy and the file's opening
            switched.append(compact_swap.finish(cfg, epoch=1, rows_now=300, started=time.monotonic()))
            switched[0].writer.close()
            compact.remove_strays(cfg, 1)  # the cleanup's first step: the old file goes

    monkeypatch.setattr(Store, "backup_to", backup_then_switch)
    path = create(cfg, tmp_path / "backups")
    assert switched and verify(path).rows == 180  # the second attempt's snapshot: after the switch
    other_cfg = cfg.__class__(data_dir=tmp_path / "restored")
    other_cfg.hashing.dim, other_cfg.embedder.backend = cfg.hashing.dim, cfg.embedder.backend
    restore(other_cfg, path)
    assert audit(other_cfg, dim=DIM)["rows"] == 180


def test_reembed_stages_a_store_at_epoch_0_without_dead_chunks(cfg: Config) -> None:
    build(cfg)
    compact_fully(cfg)
    with Store(cfg.db_path) as store:
        store.delete_document("doc20")
    stage = reembed._prepare(cfg, "other-model", 16)
    with Store(stage / "roxi.sqlite3") as staged:
        assert staged.vectors_epoch() == 0 and staged.committed_rows() == 0
        states = dict(staged.conn.execute("SELECT state, count(*) FROM chunks GROUP BY state").fetchall())
        assert states == {"pending": 170}
        # Each deleted key keeps its newest (dead) version: version numbers never repeat.
        assert staged.conn.execute("SELECT count(*) FROM documents WHERE status='dead'").fetchone()[0] == 13


def test_the_index_build_maps_the_current_epoch_s_file(cfg: Config) -> None:
    assert ann_build._current_vectors(cfg) == cfg.vectors_path  # no store yet
    build(cfg)
    compact_fully(cfg)
    assert ann_build._current_vectors(cfg) == cfg.vectors_file(1)
    with sqlite3.connect(cfg.db_path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='vectors_epoch'").fetchone()[0] == "1"


def test_stray_files_are_only_other_epochs_and_sidecars(cfg: Config) -> None:
    for name in ("vectors.faiss", "vectors.2.faiss", "vectors.3.faiss", "vectors.ann", "compact.3.json",
                 "compact.3.rows.npy.tmp", "vectors.faiss.tmp", "roxi.sqlite3"):
        (cfg.data_dir / name).write_bytes(b"x")
    removed = sorted(p.name for p in compact.remove_strays(cfg, 2))
    assert removed == ["compact.3.json", "compact.3.rows.npy.tmp", "vectors.3.faiss", "vectors.faiss"]


@pytest.mark.parametrize("name,ok", [("vectors.faiss", True), ("vectors.12.faiss", True),
                                     ("vectors.ann", False), ("vectors.x.faiss", False),
                                     ("vectors.faiss.tmp", False)])
def test_vectors_file_names(name: str, ok: bool) -> None:
    assert compact.is_vectors_file(name) is ok
