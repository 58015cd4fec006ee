"""The whole pipeline with real processes, sockets and files (issue 2's acceptance)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import psutil
import pytest
import zmq

from roxi_mp import errors
from roxi_mp.errors import ServerError
from roxi_mp.service import READY_STATES
from roxi_mp.store import Store

from ..conftest import clean_env, roxi_processes, wait_until, write_toml
from ..corpus import check_exactly_once, populate, write_corpus

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
#: seconds to wait for a state real processes reach in their own time (60): a deadline that
#: only a broken system misses, however loaded the machine
PATIENCE = 60.0


def no_processes_left(data_dir: Path) -> None:
    wait_until(lambda: roxi_processes(data_dir) == [], timeout=PATIENCE, what=f"no process of {data_dir}")


def roxi(cfg, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the installed `roxi` command line for this test system."""
    return subprocess.run([sys.executable, "-m", "roxi_mp.cli", *cfg.to_argv(), *args],
                          capture_output=True, text=True, timeout=timeout, env=clean_env())


def test_sample_corpus_start_query_status_stop(make_config):
    """Acceptance 1 through the CLI: start, sample corpus indexed, gout first, stop clean."""
    # (embedder idle 300 s, not 30: on a slow machine it must still be awake when status is read)
    cfg = make_config(supervisor__ingest_sample_on_empty=True, hashing__dim=1024, embedder__idle_seconds=300.0)
    started = roxi(cfg, "start")
    assert started.returncode == 0, started.stderr
    try:
        def indexed() -> dict | None:
            status = json.loads(roxi(cfg, "status", "--json").stdout)
            return status if status["store"]["chunks"] and status["store"]["percent"] == 100.0 else None

        status = wait_until(indexed, timeout=2 * PATIENCE, what="the sample corpus indexed")
        assert status["store"]["documents"] >= 20
        assert {r["name"]: r["state"] for r in status["roles"]}["query"] == "asleep"  # nothing mapped yet
        result = roxi(cfg, "query", "uric acid crystals in the big toe", "--json")
        assert result.returncode == 0, result.stderr
        hits = json.loads(result.stdout)["hits"]
        assert Path(hits[0]["source"]).name == "gout.md"
        def all_running() -> dict | None:  # the woken server's state reaches status with a heartbeat
            status = json.loads(roxi(cfg, "status", "--json").stdout)
            return status if all(r["state"] == "running" for r in status["roles"]) else None

        status = wait_until(all_running, timeout=PATIENCE, what="every role running")
        assert sorted(r["name"] for r in status["roles"]) == ["documents", "embedder-1", "indexer", "query"]
        assert status["store"]["percent"] == 100.0
        # The embedder yields the CPU: 5 nice levels under its supervisor, the others at its level.
        pids = {r["name"]: r["pid"] for r in status["roles"]}
        base = psutil.Process(status["supervisor"]["pid"]).nice()
        nice = {name: psutil.Process(pid).nice() for name, pid in pids.items()}
        assert nice == {"documents": base, "embedder-1": min(19, base + 5), "indexer": base, "query": base}, nice
        text = roxi(cfg, "query", "uric acid crystals in the big toe", "-k", "3")
        assert "Gout" in text.stdout.splitlines()[0]
        again = roxi(cfg, "start")
        assert again.returncode == errors.ALREADY_RUNNING
        assert "already" in again.stderr or "another supervisor" in again.stderr
    finally:
        stopped = roxi(cfg, "stop")
    assert stopped.returncode == 0, stopped.stderr
    no_processes_left(cfg.data_dir)
    assert roxi(cfg, "status").returncode == errors.NOT_RUNNING


def test_run_sh_foreground_and_ctrl_c(tmp_path):
    """`./run.sh --data-dir D` runs in the foreground; SIGINT stops every role, exit 0."""
    data = tmp_path / "data"
    conf = write_toml(tmp_path / "roxi.toml", {"embedder__backend": "hashing", "hashing__dim": 256,
                                              "supervisor__grace_seconds": 3.0,
                                              # a loaded CI machine must not make the embedder yield forever
                                              "embedder__busy_cpu_percent": 100.0})
    env = {**clean_env(), "ROXI_CONFIG": str(conf)}
    proc = subprocess.Popen([str(REPO / "run.sh"), "--data-dir", str(data)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def indexed() -> bool:
            out = subprocess.run([str(REPO / "run.sh"), "--data-dir", str(data), "status", "--json"],
                                 env=env, capture_output=True, text=True, timeout=PATIENCE)
            if out.returncode != 0:
                assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-2000:]
                return False
            store = json.loads(out.stdout)["store"]
            return bool(store["chunks"]) and store["percent"] == 100.0

        wait_until(indexed, timeout=2 * PATIENCE, what="the sample corpus indexed", interval=0.3)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        assert proc.wait(timeout=PATIENCE) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    no_processes_left(data)


def test_kill_each_role_during_ingest_loses_nothing(system, make_config, tmp_path):
    """Acceptance 3: kill -9 embedder, then indexer, then query server while ingesting."""
    cfg = make_config(embedder__batch_size=8, embedder__pause_seconds=0.03, embedder__lease_seconds=2.0)
    write_corpus(tmp_path / "docs", docs=100, words=700)
    s = system(cfg)
    result = roxi(cfg, "ingest", str(tmp_path / "docs"))
    assert result.returncode == 0, result.stderr
    total = s.stats().chunks
    assert total >= 300
    for name in ("embedder-1", "indexer", "query"):
        s.wait_for(lambda: s.stats().indexed > 0, timeout=PATIENCE, what="some progress")
        victim = s.pid(name)
        os.kill(victim, signal.SIGKILL)
        s.wait_for(lambda: s.role(name)["state"] in READY_STATES and s.pid(name) != victim,
                   timeout=PATIENCE, what=f"{name} restarted")
    assert s.stats().indexed < total, "ingest finished before the kills; slow it down"
    s.wait_indexed(total, timeout=90)
    assert check_exactly_once(cfg) == total
    with Store(cfg.db_path) as store:
        chunk_id, text = store.conn.execute("SELECT id, text FROM chunks WHERE id = 77").fetchone()
    with s.query_client() as client:
        hits = client.query(text, k=3, mode="dense")
    assert hits[0]["chunk_id"] == chunk_id and hits[0]["score"] == pytest.approx(1.0, abs=1e-2)


def test_query_server_rss_without_float32_copy(system, make_config):
    """Acceptance 4: RSS with 100k indexed chunks stays below (rows x dim x 2) + 150 MB."""
    rows, dim = 100_000, 1024
    cfg = make_config(hashing__dim=dim)
    populate(cfg, rows=rows)
    s = system(cfg)
    with s.query_client(timeout=30) as client:
        hits = client.query("synovial joint", k=10)  # a full scan touches every row
        assert len(hits) == 10
        assert client.stats()["rows"] == rows
    rss = psutil.Process(s.pid("query")).memory_info().rss
    limit = rows * dim * 2 + 150 * 2**20
    assert rss < limit, f"query server RSS {rss / 2**20:.0f} MB >= {limit / 2**20:.0f} MB"
    with open(cfg.vectors_path, "rb") as fh:
        assert fh.read(4) == b"IxSQ"  # float16 rows in a faiss SQ-fp16 layout


def test_raw_pyzmq_client_from_readme(system, make_config, tmp_path):
    """Acceptance 5: a client built only from the README's protocol section gets answers."""
    cfg = make_config()
    write_corpus(tmp_path / "docs", docs=5, words=100)
    s = system(cfg)
    assert roxi(cfg, "ingest", str(tmp_path / "docs")).returncode == 0
    s.wait_indexed(s.stats().chunks)
    readme = (REPO / "README.md").read_text()
    assert '"op": "query"' in readme and "DEALER" in readme and "REQ" in readme
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(cfg.endpoint("query"))
    try:
        sock.send(msgpack.packb({"v": 1, "id": 1, "op": "query", "text": "token3x1", "k": 2}))
        assert sock.poll(10_000), "no reply"
        reply = msgpack.unpackb(sock.recv())
        assert reply["ok"] is True and reply["id"] == 1
        assert reply["hits"][0]["title"] == "Document 3"
        assert {"rank", "score", "chunk_id", "doc_id", "title", "source", "text"} <= set(reply["hits"][0])
        sock.send(msgpack.packb({"v": 1, "id": 2, "op": "query", "text": "", "k": 2}))
        assert sock.poll(10_000)
        err = msgpack.unpackb(sock.recv())
        assert err == {"v": 1, "id": 2, "ok": False, "code": "bad_request", "message": err["message"]}
    finally:
        sock.close()


def test_query_socket_survives_malformed_and_oversized(system, make_config, tmp_path):
    """Garbage on the query socket gets error replies (or is dropped); the server keeps serving."""
    cfg = make_config(limits__max_message_bytes=8192, query__max_query_chars=4096)
    write_corpus(tmp_path / "docs", docs=3, words=60)
    s = system(cfg)
    assert roxi(cfg, "ingest", str(tmp_path / "docs")).returncode == 0
    s.wait_indexed(s.stats().chunks)
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(cfg.endpoint("query"))
    garbage = [
        [b"", b"\xc1\xc1not msgpack"],
        [b"", msgpack.packb([1, 2, 3])],
        [b"", msgpack.packb({"v": 99, "id": "x", "op": "query", "text": "a"})],
        [b"", msgpack.packb({"v": 1, "id": "y", "op": "explode"})],
        [b"", msgpack.packb({"v": 1, "id": "z", "op": "query", "text": "a " * 5000})],  # 10 kB
        [b"", msgpack.packb({"v": 1, "id": "k", "op": "query", "text": "a", "k": 10**9})],
    ]
    codes = []
    try:
        for frames in garbage:
            dealer.send_multipart(frames)
            assert dealer.poll(5000), f"no reply to {frames!r:.60}"
            reply = msgpack.unpackb(dealer.recv_multipart()[-1])
            assert reply["ok"] is False and reply["code"] and reply["message"], reply
            codes.append(reply["code"])
        assert codes == ["bad_request", "bad_request", "bad_version", "unknown_op", "too_large",
                         "bad_request"]
        dealer.send_multipart([b"", b"x" * 100_000])  # over the socket's hard cap: dropped
        time.sleep(0.3)
    finally:
        dealer.close()
    with s.query_client() as client:
        assert client.query("token1x1", k=1)[0]["title"] == "Document 1"
        with pytest.raises(ServerError) as bad_k:
            client.query("token1x1", k=0)
        assert bad_k.value.code == "bad_request"
        assert client.stats()["errors"] >= len(garbage)
    assert s.role("query")["restarts"] == 0


def test_mismatched_embedder_is_refused(system, make_config, tmp_path):
    """A store built with one model refuses an embedder of another dimension at boot."""
    cfg = make_config(hashing__dim=256)
    populate(cfg, rows=10)
    other = make_config(data_dir=cfg.data_dir, hashing__dim=512)
    s = system(other, start=False).start(wait=False)
    s.wait_for(lambda: s.role("indexer")["state"] == "failed" and s.role("embedder-1")["state"] == "failed",
               timeout=PATIENCE, what="roles refused with boot error")
    assert s.role("indexer")["exit_code"] == errors.BOOT_ERROR
    log = (cfg.log_dir / "indexer.log").read_text()
    assert "hashing-v1-256" in log and "hashing-v1-512" in log
    with Store(cfg.db_path) as store:
        assert store.stats().indexed == 10  # nothing touched
