"""Unit tests of the `roxi` command line, in-process with click's CliRunner (no supervisor)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from roxi_mp import errors
from roxi_mp.cli import main
from roxi_mp.store import Store
from tests.conftest import write_toml


@pytest.fixture
def env(tmp_path: Path) -> dict:
    data = tmp_path / "data"
    conf = write_toml(tmp_path / "cli.toml", {"supervisor__ingest_sample_on_empty": False,
                                               "hashing__dim": 256})
    return {"data": data, "conf": conf}


def roxi(env: dict, *args: str, conf: Path | None = None) -> Result:
    # No ROXI_* variable of the caller's environment may change what the CLI does.
    clean = {k: None for k in os.environ if k.startswith("ROXI_")}
    runner = CliRunner(env=clean)
    return runner.invoke(main, ["--data-dir", str(env["data"]), "--config", str(conf or env["conf"]), *args],
                         catch_exceptions=False)


@pytest.fixture
def docs(tmp_path: Path) -> list[Path]:
    d = tmp_path / "docs"
    d.mkdir()
    a = d / "gout.md"
    a.write_text("# Gout\n\nGout is an inflammatory arthritis caused by urate crystals.\n")
    b = d / "lupus.txt"
    b.write_text("Lupus is a systemic autoimmune disease.\n")
    return [a, b]


def test_ingest_good_files_exits_0_and_prints_counts(env: dict, docs: list[Path]) -> None:
    result = roxi(env, "ingest", *map(str, docs))
    assert result.exit_code == errors.OK, result.output
    assert result.stdout == ("added 2 documents, 0 replaced, 0 unchanged, 0 empty, 0 removed, 0 skipped; "
                             "2 chunks to index (0 reuse a stored vector)\n")
    assert result.stderr == ""
    with Store(env["data"] / "roxi.sqlite3") as store:
        assert store.stats().documents == 2
    again = roxi(env, "ingest", *map(str, docs))
    assert again.exit_code == errors.OK
    assert "added 0 documents, 0 replaced, 2 unchanged" in again.stdout


def test_ingest_json_report(env: dict, docs: list[Path]) -> None:
    result = roxi(env, "ingest", "--json", str(docs[0].parent))
    assert result.exit_code == errors.OK
    report = json.loads(result.stdout)
    assert report == {"files": 2, "added": 2, "replaced": 0, "unchanged": 0, "empty": 0, "chunks": 2,
                      "reused": 0, "removed": 0, "removed_keys": [], "errors": []}


def test_ingest_with_a_missing_path_exits_5_and_keeps_the_good_ones(env: dict, docs: list[Path],
                                                                   tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist.md"
    result = roxi(env, "ingest", str(docs[0]), str(missing), str(docs[1]))
    assert result.exit_code == errors.BAD_INPUT
    assert "added 2 documents" in result.stdout
    assert str(missing) in result.stderr and "no such file" in result.stderr
    assert str(missing) not in result.stdout
    with Store(env["data"] / "roxi.sqlite3") as store:
        sources = sorted(Path(r[0]).name for r in store.conn.execute("SELECT source FROM documents"))
    assert sources == ["gout.md", "lupus.txt"]


def test_ingest_of_a_bad_utf8_file_exits_5_naming_it(env: dict, docs: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.md"
    bad.write_bytes(b"\xff\xfe\x00bad")
    result = roxi(env, "ingest", str(bad), str(docs[0]))
    assert result.exit_code == errors.BAD_INPUT
    assert f"skipped {bad}: not valid UTF-8" in result.stderr
    assert "added 1 documents" in result.stdout


def test_ingest_without_paths_is_a_usage_error(env: dict) -> None:
    assert roxi(env, "ingest").exit_code == errors.USAGE


def test_status_when_not_running_exits_3_and_shows_store_counts(env: dict, docs: list[Path]) -> None:
    roxi(env, "ingest", *map(str, docs))
    result = roxi(env, "status")
    assert result.exit_code == errors.NOT_RUNNING
    assert "supervisor: not running" in result.stdout
    assert "store: 2 documents, 2 chunks, 0 indexed (0.0 %), 2 pending, 0 failed" in result.stdout


def test_status_on_a_fresh_data_dir_does_not_create_a_store(env: dict) -> None:
    result = roxi(env, "status")
    assert result.exit_code == errors.NOT_RUNNING
    assert "store: 0 documents, 0 chunks" in result.stdout
    assert not (env["data"] / "roxi.sqlite3").exists()


def test_status_json_parses(env: dict, docs: list[Path]) -> None:
    roxi(env, "ingest", str(docs[0]))
    result = roxi(env, "status", "--json")
    assert result.exit_code == errors.NOT_RUNNING
    data = json.loads(result.stdout)
    assert data["running"] is False and data["supervisor"] is None and data["roles"] == []
    assert data["store"]["documents"] == 1 and data["store"]["pending"] == 1
    assert data["store"]["percent"] == 0.0


def test_progress_json(env: dict, docs: list[Path]) -> None:
    roxi(env, "ingest", *map(str, docs))
    with Store(env["data"] / "roxi.sqlite3") as store:
        store.commit_rows([(1, 0)], rows=1)
    result = roxi(env, "progress", "--json")
    assert result.exit_code == errors.OK
    data = json.loads(result.stdout)
    assert (data["indexed"], data["chunks"], data["percent"], data["committed_rows"]) == (1, 2, 50.0, 1)
    plain = roxi(env, "progress")
    assert plain.exit_code == errors.OK
    assert "1/2 chunks indexed (50.0 %), 0 failed" in plain.stdout


def test_progress_target_not_reached_exits_1(env: dict, docs: list[Path]) -> None:
    roxi(env, "ingest", *map(str, docs))
    result = roxi(env, "progress", "--target", "50")
    assert result.exit_code == errors.TARGET_NOT_REACHED


def test_query_with_empty_text_exits_5(env: dict) -> None:
    for text in ("", "   "):
        result = roxi(env, "query", text)
        assert result.exit_code == errors.BAD_INPUT
        assert result.stderr.strip() == "roxi: query text is empty"


def test_query_when_not_running_exits_3_with_one_line(env: dict) -> None:
    result = roxi(env, "query", "x")
    assert result.exit_code == errors.NOT_RUNNING
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("roxi: ") and "query.sock" in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_stop_when_not_running_exits_3(env: dict) -> None:
    result = roxi(env, "stop")
    assert result.exit_code == errors.NOT_RUNNING
    assert result.stderr.strip() == f"roxi: not running on {env['data'].resolve()}"


@pytest.mark.parametrize("command", [["status"], ["ingest", "x.md"], ["query", "x"], ["progress"]])
def test_unknown_config_key_exits_6_naming_the_key(env: dict, tmp_path: Path, command: list[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[embedder]\ndimension = 256\n")
    result = roxi(env, *command, conf=bad)
    assert result.exit_code == errors.CONFIG
    assert "embedder.dimension" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (env["data"] / "roxi.sqlite3").exists()


def test_store_error_exits_7(env: dict, docs: list[Path]) -> None:
    env["data"].mkdir(parents=True)
    (env["data"] / "roxi.sqlite3").write_bytes(b"garbage, not sqlite" * 100)
    result = roxi(env, "ingest", str(docs[0]))
    assert result.exit_code == errors.STORE
    assert "roxi.sqlite3" in result.stderr



@pytest.fixture
def fake(monkeypatch):
    """service's view of a running system, faked: `process` runs without processes. Here the
    counts move on every reading (the CLI leaves process_until its real sleep, POLL 0 s)."""
    from roxi_mp import service

    from .test_service import FakeSystem

    system = FakeSystem()

    def stats(cfg):
        system.sleep(0.1)
        return system.stats(cfg)

    monkeypatch.setattr(service, "is_running", lambda cfg: system.running)
    monkeypatch.setattr(service, "store_stats", stats)
    monkeypatch.setattr(service, "set_paused", system.set_paused)
    monkeypatch.setattr(service, "POLL", 0.0)
    return system


def test_process_prints_reached_and_pauses(env: dict, fake) -> None:
    result = roxi(env, "process", "--until", "50")
    assert result.exit_code == errors.OK, result.output
    assert result.stdout == ("reached 50.0 % (50/100 chunks): processing paused; `roxi resume` or "
                             "`roxi process --until 100` to go on\n")
    assert fake.pauses == [False, True]


def test_process_unreachable_exits_9(env: dict, fake) -> None:
    fake.failed = 70
    result = roxi(env, "process", "--until", "50")
    assert result.exit_code == errors.SERVER
    assert result.stderr == ("roxi: target 50 % cannot be reached: 70 chunks failed "
                             "(see `roxi progress`, `roxi retry-failed`)\n")
    assert fake.pauses == [False, True]


def test_process_ctrl_c_pauses_and_exits_130(env: dict, fake) -> None:
    fake.interrupt_at = 4  # the readings: the check (paused), then 10 %, 20 %, then Ctrl-C
    result = roxi(env, "process", "--until", "100")
    assert result.exit_code == 130
    assert result.stderr == "interrupted at 20.0 %: processing paused\n"
    assert fake.pauses == [False, True]


def test_reembed_backends_come_from_the_embedder_registry(env: dict) -> None:
    from roxi_mp.embedders import BACKENDS

    result = roxi(env, "reembed", "--model", "nope")
    assert result.exit_code == errors.USAGE
    assert all(repr(name) in result.stderr for name in BACKENDS)
