"""Backups with real processes (issue 6, 4-5; scheduled backups)."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from roxi_mp import errors
from roxi_mp.backup import list_backups
from roxi_mp.embedders import HashingEmbedder
from roxi_mp.vectors import open_index

from ..conftest import PATIENCE, log_records
from ..corpus import check_exactly_once, write_corpus
from .test_pipeline import roxi

pytestmark = pytest.mark.integration

QUERIES = ["synovial joint inflammation", "kidney lung skin rash", "dose tablet injection monitoring",
           "fatigue stiffness morning swelling", "vaccine infection pregnancy child"]


def slow_config(make_config, **overrides):
    settings = dict(embedder__batch_size=8, embedder__yield_batch_size=8, embedder__pause_seconds=0.05,
                    store__chunk_words=40, store__chunk_overlap=5, backup__interval_seconds=0.0,
                    backup__milestones=False)
    return make_config(**{**settings, **overrides})


def file_hashes(cfg) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (cfg.db_path, cfg.vectors_path)}


def test_backup_mid_ingest_verifies_and_restores_to_identical_answers(system, make_config, tmp_path):
    cfg = slow_config(make_config)
    write_corpus(tmp_path / "docs", docs=40, words=700)
    s = system(cfg)
    assert roxi(cfg, "ingest", str(tmp_path / "docs")).returncode == 0
    total = s.stats().chunks
    s.wait_for(lambda: s.stats().indexed > total // 4, timeout=PATIENCE, what="a quarter indexed")
    created = roxi(cfg, "backup", "create")
    assert created.returncode == 0, created.stderr
    assert 0 < s.stats().indexed < total, "the backup was not taken mid-ingest"
    (backup,) = list_backups(cfg.backup_dir)
    rows = backup.manifest.rows
    assert 0 < rows < total
    verified = roxi(cfg, "backup", "verify", backup.path.name)
    assert verified.returncode == 0, verified.stderr
    assert roxi(cfg, "backup", "list").stdout.count("manual") == 1

    # the answers the live store gave at that point: its first `rows` rows never change
    model = HashingEmbedder(dim=cfg.hashing.dim)
    live = open_index(cfg.vectors_path, rows=rows)
    expected = []
    for q in QUERIES:
        scores, ids = live.search(np.ascontiguousarray(model.encode([q]), dtype=np.float32), 5)
        expected.append([(int(i), float(sc)) for i, sc in zip(ids[0], scores[0])])
    del live

    fresh = make_config(data_dir=tmp_path / "fresh")
    restored = roxi(fresh, "restore", str(backup.path))
    assert restored.returncode == 0, restored.stderr
    # the snapshot holds pending chunks too, which a running system goes on indexing:
    # pause it to compare answers at the backup's point
    assert roxi(fresh, "pause").returncode == 0
    s2 = system(fresh)
    with s2.query_client() as client:
        got = [[(h["row"], h["score"]) for h in client.query(q, k=5, mode="dense")] for q in QUERIES]
    assert got == expected  # same rows and bit-identical scores
    assert s2.stats().indexed == rows


@pytest.mark.parametrize("damage", ["flip_vectors_byte", "truncate_database"])
def test_damaged_backup_fails_verify_and_restore_leaves_the_store_untouched(system, make_config, tmp_path, damage):
    cfg = slow_config(make_config, embedder__pause_seconds=0.0)
    write_corpus(tmp_path / "docs", docs=10, words=300)
    s = system(cfg)
    assert roxi(cfg, "ingest", str(tmp_path / "docs")).returncode == 0
    s.wait_indexed(s.stats().chunks)
    assert roxi(cfg, "backup", "create").returncode == 0
    (backup,) = list_backups(cfg.backup_dir)
    if damage == "flip_vectors_byte":
        target = backup.path / "vectors.faiss"
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    else:
        target = backup.path / "roxi.sqlite3"
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    result = roxi(cfg, "backup", "verify", backup.path.name)
    assert result.returncode == errors.STORE
    assert target.name in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert s.stop() == 0
    before = file_hashes(cfg)
    refused = roxi(cfg, "restore", backup.path.name)
    assert refused.returncode == errors.STORE and target.name in refused.stderr
    assert file_hashes(cfg) == before
    assert check_exactly_once(cfg) == s.stats().chunks


def test_restore_refuses_while_running_unless_stop(system, make_config, tmp_path):
    cfg = slow_config(make_config, embedder__pause_seconds=0.0)
    write_corpus(tmp_path / "docs", docs=5, words=200)
    s = system(cfg)
    assert roxi(cfg, "ingest", str(tmp_path / "docs")).returncode == 0
    s.wait_indexed(s.stats().chunks)
    assert roxi(cfg, "backup", "create").returncode == 0
    name = list_backups(cfg.backup_dir)[0].path.name
    refused = roxi(cfg, "restore", name)
    assert refused.returncode == errors.ALREADY_RUNNING and "--stop" in refused.stderr
    assert roxi(cfg, "restore", "no-such-backup").returncode == errors.BAD_INPUT
    done = roxi(cfg, "restore", name, "--stop")
    assert done.returncode == 0, done.stderr
    assert s.proc.wait(timeout=PATIENCE) == 0
    assert check_exactly_once(cfg) == s.stats().chunks


def test_supervisor_backs_up_at_every_10_percent_milestone(system, make_config, tmp_path):
    cfg = slow_config(make_config, backup__milestones=True, backup__check_seconds=0.2, backup__keep=20,
                      embedder__pause_seconds=0.1)
    write_corpus(tmp_path / "docs", docs=30, words=700)
    s = system(cfg)
    assert roxi(cfg, "ingest", str(tmp_path / "docs")).returncode == 0
    s.wait_indexed(s.stats().chunks, timeout=2 * PATIENCE)
    s.wait_for(lambda: s.status()["backups"]["running"] is None and len(list_backups(cfg.backup_dir)) >= 5,
               timeout=PATIENCE, what="milestone backups")
    backups = list_backups(cfg.backup_dir)
    assert all(b.manifest.kind == "milestone" for b in backups)
    fractions = [b.manifest.indexed / b.manifest.chunks for b in backups]
    assert fractions == sorted(fractions)
    # The milestone each backup was taken for, as the supervisor recorded it ("milestone
    # backup started (pid N) at 50 %", then "milestone backup <path>" when it is done): every
    # decade at most once, in order, the 50 % one among them, and each snapshot at or past
    # its milestone. Not "the snapshot near 50 %": a backup job is a process of its own, and
    # on a loaded machine indexing goes on for a while before it takes its snapshot (with two
    # CPU hogs: 0.53 for the 50 % one, 0.147 for the 10 % one). A decade is ~0.75 s of
    # indexing here and a job ~0.3 s with the hogs, so none is skipped for a job still running.
    milestones, started = {}, None
    for _, message in log_records(cfg.log_dir / "supervisor.log"):
        if match := re.match(r"milestone backup started \(pid \d+\) at (\d+) %$", message):
            started = int(match[1])
        elif match := re.match(r"milestone backup (/\S+)$", message):
            milestones[match[1]] = started
    taken = [milestones[str(b.path)] for b in backups]
    assert taken == sorted(set(taken)) and 50 in taken, taken
    assert all(f >= m / 100 for f, m in zip(fractions, taken)), list(zip(fractions, taken))
    last = s.status()["backups"]["last"]
    assert last["ok"] is True and last["kind"] == "milestone"
    for b in backups:
        assert roxi(cfg, "backup", "verify", str(b.path)).returncode == 0
