"""Unit tests of the `roxi` commands for documents that change: ingest replacing and
syncing, rm, docs, compact, and the rows and compactions status and progress show.

In-process with click's CliRunner against a real store in tmp_path; indexing is the
indexer's commit protocol run by the test (roxi_mp.commit with a VectorWriter), and a
running system, where one is needed, is a fake control socket.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from roxi_mp import errors, service
from roxi_mp.commit import commit
from roxi_mp.config import load
from roxi_mp.errors import ServerError
from roxi_mp.store import Store
from roxi_mp.vectors import VectorWriter

from tests.conftest import write_toml

from .test_cli import roxi


@pytest.fixture
def env(tmp_path: Path) -> dict:
    """test_cli's data directory and configuration, with 50-word chunks (a section each)."""
    conf = write_toml(tmp_path / "cli.toml", {"supervisor__ingest_sample_on_empty": False, "hashing__dim": 256,
                                               "store__chunk_words": 50, "store__chunk_overlap": 10})
    return {"data": tmp_path / "data", "conf": conf}


def store_of(env: dict) -> Store:
    return Store(env["data"] / "roxi.sqlite3")


def index_all(env: dict) -> int:
    """Index every chunk without a row, as the indexer would: pending ones embedded (random
    vectors) and committed, then copies committed as reused vectors; returns how many."""
    cfg = load(env["conf"], data_dir=env["data"], env={})
    rng = np.random.default_rng(7)
    with store_of(env) as store, VectorWriter(cfg.vectors_path, dim=256, model_id="test/model") as writer:
        writer.recover(store.committed_rows())
        ids = [r[0] for r in store.conn.execute("SELECT id FROM chunks WHERE state='pending' ORDER BY id")]
        if ids:
            commit(store, writer, ids, rng.random((len(ids), 256), dtype=np.float32))
        copies = store.claim_copies(1000)
        if copies:
            first = writer.append(rng.random((len(copies), 256), dtype=np.float32))
            writer.sync()
            rows = first + len(copies)
            store.commit_rows([(cid, first + i) for i, (cid, _) in enumerate(copies)], rows=rows,
                              reused=len(copies))
            writer.publish(rows)
    return len(ids) + len(copies)


def section(name: str) -> str:
    return f"# {name}\n\n" + " ".join(f"{name}-word{i}." for i in range(45)) + "\n"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "gout.md").write_text(section("urate") + "\n" + section("colchicine") + "\n" + section("diet"))
    (d / "lupus.md").write_text(section("lupus"))
    (d / "ra.txt").write_text("Rheumatoid arthritis is an autoimmune disease of the joints.\n")
    return d


def docs_json(env: dict, *args: str) -> dict:
    result = roxi(env, "docs", "--json", *args)
    assert result.exit_code == errors.OK, result.output
    return json.loads(result.stdout)


def statuses(env: dict, *args: str) -> list[tuple[str, str, int]]:
    return [(Path(d["key"]).name, d["status"], d["version"]) for d in docs_json(env, *args)["documents"]]


def test_reingest_of_a_changed_file_replaces_it_and_reuses_indexed_chunks(env: dict, corpus: Path) -> None:
    assert roxi(env, "ingest", str(corpus)).exit_code == errors.OK
    index_all(env)
    gout = corpus / "gout.md"
    gout.write_text(section("urate") + "\n" + section("colchicine") + "\n" + section("allopurinol"))
    result = roxi(env, "ingest", str(corpus))
    assert result.exit_code == errors.OK, result.output
    assert result.stdout.startswith("added 0 documents, 1 replaced, 2 unchanged, 0 empty, 0 removed, 0 skipped; ")
    report = json.loads(roxi(env, "ingest", "--json", str(gout)).stdout)
    assert (report["unchanged"], report["replaced"]) == (1, 0)
    with store_of(env) as store:
        key = str(gout.resolve())
        doc = store.document(key)
        assert (doc["live"]["version"], doc["pending"]["version"]) == (1, 2)  # v1 answers meanwhile
        shared = {r[0] for r in store.conn.execute(
            "SELECT c.hash FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE d.key=? AND d.version=1", (key,))}
        v2 = store.conn.execute("SELECT c.hash, c.state FROM chunks c JOIN documents d ON d.id = c.doc_id "
                                "WHERE d.key=? AND d.version=2", (key,)).fetchall()
    assert {s for h, s in v2 if h in shared} == {"copy"} and {s for h, s in v2 if h not in shared} == {"pending"}
    assert f"{len(v2)} chunks to index ({sum(h in shared for h, _ in v2)} reuse a stored vector)" in result.stdout
    assert statuses(env) == [("gout.md", "live", 1), ("gout.md", "pending", 2), ("lupus.md", "live", 1),
                             ("ra.txt", "live", 1)]
    table = roxi(env, "docs").stdout.splitlines()
    assert table[0].split() == ["KEY", "STATUS", "VERSION", "INDEXED/CHUNKS", "FAILED"]
    assert table[2].split() == [key, "replacing", "2", f"0/{len(v2)}", "0"]
    index_all(env)
    assert statuses(env, "--state", "live")[0] == ("gout.md", "live", 2)
    assert statuses(env, "--state", "pending") == []


def test_ingest_sync_deletes_the_documents_of_vanished_files(env: dict, corpus: Path) -> None:
    roxi(env, "ingest", str(corpus))
    (corpus / "lupus.md").unlink()
    plain = roxi(env, "ingest", str(corpus))
    assert "0 removed" in plain.stdout and len(statuses(env)) == 3
    result = roxi(env, "ingest", "--sync", str(corpus))
    assert result.exit_code == errors.OK, result.output
    assert ", 1 removed, " in result.stdout
    assert f"removed {(corpus / 'lupus.md').resolve()}" in result.stdout.splitlines()
    assert [name for name, _, _ in statuses(env)] == ["gout.md", "ra.txt"]
    refused = roxi(env, "ingest", "--sync", str(corpus / "ra.txt"))
    assert refused.exit_code == errors.BAD_INPUT
    assert refused.stderr == "roxi: --sync applies to directory arguments: give at least one directory\n"


def test_a_renamed_file_keeps_no_copy_under_its_old_key(env: dict, corpus: Path) -> None:
    roxi(env, "ingest", str(corpus))
    index_all(env)
    (corpus / "ra.txt").rename(corpus / "rheumatoid.txt")
    result = roxi(env, "ingest", str(corpus))
    assert "added 1 documents" in result.stdout and ", 1 removed, " in result.stdout
    assert [name for name, _, _ in statuses(env)] == ["gout.md", "lupus.md", "rheumatoid.txt"]
    assert "(1 reuse a stored vector)" in result.stdout  # the text was embedded under the old name


def test_ingest_key_names_one_files_document(env: dict, corpus: Path) -> None:
    result = roxi(env, "ingest", "--key", "guidelines/ra", str(corpus / "ra.txt"))
    assert result.exit_code == errors.OK, result.output
    assert [d["key"] for d in docs_json(env)["documents"]] == ["guidelines/ra"]
    for args in ([str(corpus / "ra.txt"), str(corpus / "gout.md")], [str(corpus)]):
        refused = roxi(env, "ingest", "--key", "k", *args)
        assert refused.exit_code == errors.BAD_INPUT
        assert refused.stderr == "roxi: --key names one document: give exactly one file\n"
    assert len(docs_json(env)["documents"]) == 1


def test_rm_deletes_the_known_documents_and_exits_5_naming_the_unknown(env: dict, corpus: Path) -> None:
    roxi(env, "ingest", str(corpus))
    gout, lupus = corpus / "gout.md", corpus / "lupus.md"
    lupus.unlink()  # a path that is gone is tried as its resolved key too
    relative = os.path.relpath(gout)
    result = roxi(env, "rm", relative, "no-such-key", str(lupus))
    assert result.exit_code == errors.BAD_INPUT
    assert result.stdout.splitlines() == [f"removed {gout.resolve()}", f"removed {lupus.resolve()}"]
    assert result.stderr == "roxi: no document with key 'no-such-key'\n"
    assert [name for name, _, _ in statuses(env)] == ["ra.txt"]
    again = roxi(env, "rm", str(corpus / "ra.txt"))
    assert again.exit_code == errors.OK and statuses(env) == []
    assert roxi(env, "rm", str(corpus / "ra.txt")).exit_code == errors.BAD_INPUT
    assert roxi(env, "rm").exit_code == errors.USAGE


def test_rm_and_docs_on_a_fresh_data_dir_create_no_store(env: dict) -> None:
    result = roxi(env, "rm", "k1", "k2")
    assert result.exit_code == errors.BAD_INPUT
    assert result.stderr == "roxi: no document with key 'k1', 'k2'\n"
    assert docs_json(env) == {"documents": [], "after": None}
    assert roxi(env, "docs").stdout == "no documents\n"
    assert not (env["data"] / "roxi.sqlite3").exists()


def test_docs_state_failed_and_paging(env: dict, corpus: Path) -> None:
    roxi(env, "ingest", str(corpus))
    index_all(env)
    (corpus / "gout.md").write_text(section("revised"))
    roxi(env, "ingest", str(corpus))
    with store_of(env) as store, store.transaction():
        store.conn.execute("UPDATE chunks SET state='failed', error='x' WHERE doc_id = "
                           "(SELECT id FROM documents WHERE key=? AND status='pending')",
                           (str((corpus / "gout.md").resolve()),))
    assert statuses(env, "--state", "failed") == [("gout.md", "pending", 2)]
    assert roxi(env, "docs", "--state", "failed").stdout.splitlines()[1].split()[1:] == ["replacing", "2", "0/1", "1"]
    first = docs_json(env, "--limit", "1")  # a key's two versions stay on one page
    assert [(Path(d["key"]).name, d["version"]) for d in first["documents"]] == [("gout.md", 1), ("gout.md", 2)]
    second = docs_json(env, "--limit", "1", "--after", first["after"])
    assert [Path(d["key"]).name for d in second["documents"]] == ["lupus.md"]
    last = docs_json(env, "--limit", "1", "--after", second["after"])
    assert [Path(d["key"]).name for d in last["documents"]] == ["ra.txt"] and last["after"] is None
    assert "--after" in roxi(env, "docs", "--limit", "1").stdout.splitlines()[-1]
    assert roxi(env, "docs", "--state", "dead").exit_code == errors.USAGE


class FakeControl:
    """The supervisor's control socket as service sees it: `status` rows and `compact`."""

    def __init__(self) -> None:
        self.compaction: dict[str, Any] | None = {"running": False, "last": None, "reclaimable_bytes": 0,
                                                  "refused": None, "count": 0}
        self.refuse: str | None = None
        self.commands: list[str] = []

    @classmethod
    def install(cls, monkeypatch) -> "FakeControl":
        fake = cls()
        monkeypatch.setattr(service, "is_running", lambda cfg: True)
        monkeypatch.setattr(service.ControlClient, "for_config", classmethod(lambda c, cfg, **kw: fake))
        return fake

    def __enter__(self) -> "FakeControl":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def command(self, name: str, **args: Any) -> dict:
        self.commands.append(name)
        if name == "compact":
            if self.refuse:
                raise ServerError(errors.E_BUSY, self.refuse)
            started = not self.compaction["running"]
            self.compaction["running"] = True
            return {"started": started, "running": True, "message": "compacting"}
        assert name == "status"
        indexer = {"name": "indexer", "role": "indexer", "state": "running", "pid": 42, "restarts": 0,
                   "uptime": 5.0, "heartbeat_age": 0.2, "rss": None, "cpu_percent": None}
        if self.compaction is not None:
            indexer["compaction"] = dict(self.compaction)
        return {"supervisor": {"pid": 41, "uptime": 6.0}, "roles": [indexer]}


def test_compact_when_not_running_exits_3(env: dict) -> None:
    result = roxi(env, "compact")
    assert result.exit_code == errors.NOT_RUNNING
    assert result.stderr == f"roxi: not running on {env['data'].resolve()}\n"


def test_compact_starts_once_and_reports_a_refusal(env: dict, monkeypatch) -> None:
    fake = FakeControl.install(monkeypatch)
    assert roxi(env, "compact").stdout == "compaction started\n"
    again = roxi(env, "compact")
    assert (again.exit_code, again.stdout) == (errors.OK, "a compaction is already running\n")
    fake.compaction["running"] = False
    fake.refuse = "not enough disk for the new vectors file: 1.2 GB free, 2.0 GB needed"
    refused = roxi(env, "compact")
    assert refused.exit_code == errors.SERVER
    assert refused.stderr == f"roxi: {fake.refuse}\n" and refused.stdout == ""
    assert fake.commands == ["compact"] * 3


def test_status_and_progress_show_rows_reuse_and_compactions(env: dict, corpus: Path, monkeypatch) -> None:
    roxi(env, "ingest", str(corpus))
    index_all(env)
    (corpus / "gout.md").write_text(section("urate") + "\n" + section("colchicine") + "\n" + section("febuxostat"))
    roxi(env, "ingest", str(corpus))
    index_all(env)  # v2 live: its two unchanged sections' chunks reused vectors, v1's three rows are dead
    with store_of(env) as store:
        s = store.stats()
    assert (s.dead_rows, s.reused, s.replacing) == (3, 2, 0)
    rows_line = f"rows: {s.live_rows} live, 3 dead (`roxi compact` gives them back); 2 vectors reused"
    fake = FakeControl.install(monkeypatch)
    fake.compaction.update(running=True, reclaimable_bytes=3 << 20, count=2,
                           last={"rows": 120, "reclaimed_bytes": 5 << 20, "seconds": 1.5})
    status = roxi(env, "status")
    assert status.exit_code == errors.OK, status.output
    assert "store: 3 documents" in status.stdout and rows_line in status.stdout
    assert "      compaction: running, 2 done, 3.0 MB reclaimable" in status.stdout.splitlines()
    assert "        last: rows 120, reclaimed_bytes 5.0 MB, seconds 1.50" in status.stdout.splitlines()
    progress = roxi(env, "progress")
    assert rows_line in progress.stdout and "compaction: running, 2 done, 3.0 MB reclaimable" in progress.stdout
    data = json.loads(roxi(env, "progress", "--json").stdout)
    assert data["compaction"]["count"] == 2
    assert {"indexed", "chunks", "percent", "committed_rows", "failed", "failures", "paused"} <= data.keys()
    assert (data["dead_rows"], data["reused"], data["live_rows"], data["replacing"]) == (3, 2, s.live_rows, 0)
    fake.compaction = None  # an indexer that reports no compaction: nothing shown, nothing fails
    assert "compaction" not in roxi(env, "status").stdout
    assert json.loads(roxi(env, "progress", "--json").stdout)["compaction"] is None
