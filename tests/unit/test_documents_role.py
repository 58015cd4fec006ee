"""The documents role driven in-process: a real Store in tmp_path, real ZeroMQ sockets over
ipc, the role's `loop(now)` stepped by the test (or by a thread, where several clients talk
to it at once), and DocumentsClient or a raw DEALER on the other side."""

from __future__ import annotations

import random
import socket
import sqlite3
import threading
import time
from typing import Callable, Iterator

import pytest
import zmq

from roxi_mp import keys, protocol
from roxi_mp.client import Client, DocumentsClient
from roxi_mp.config import Config
from roxi_mp.documents import chunk_rows
from roxi_mp.errors import ConfigError, ServerError, Timeout
from roxi_mp.roles.base import Runner
from roxi_mp.roles.documents import DocumentsRole
from roxi_mp.store import Store
from tests.conftest import PATIENCE, wait_until

#: small limits, so that each bad case is cheap to send
LIMITS = {"supervisor__heartbeat_seconds": 0.1, "documents__max_document_bytes": 4096,
          "documents__max_key_chars": 64, "documents__max_metadata_entries": 4,
          "documents__max_metadata_bytes": 256, "documents__list_max": 50,
          "store__chunk_words": 20, "store__chunk_overlap": 4}

GOUT = "# Gout\n\n" + " ".join(f"urate{i} crystal{i} toe{i}." for i in range(20)) + "\n"
GOUT_V2 = GOUT + "\n" + " ".join(f"colchicine{i} flare{i}." for i in range(20)) + "\n"


# --- fixtures ----------------------------------------------------------------------------
@pytest.fixture
def cfg_factory(make_config) -> Callable[..., Config]:
    def make(**overrides) -> Config:
        cfg = make_config(**{**LIMITS, **overrides})
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        cfg.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        Store.open(cfg).close()  # the supervisor migrates the store before spawning roles
        return cfg
    return make


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


class Endpoint:
    """The role stepped by a thread of its own, as its process would; clients talk to it."""

    def __init__(self, cfg: Config, ctx: zmq.Context) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.role = DocumentsRole(cfg, ctx)
        self.role.initialize()
        self.failure: BaseException | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.role.loop(time.monotonic())
        except BaseException as exc:  # re-raised by close(): a crash fails the test
            self.failure = exc

    def client(self, timeout: float = PATIENCE) -> DocumentsClient:
        return DocumentsClient(self.cfg.endpoint("documents"), ctx=self.ctx, timeout=timeout)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=PATIENCE)
        self.role.shutdown()
        if self.failure is not None:
            raise self.failure


@pytest.fixture
def endpoint_factory(cfg_factory, zctx) -> Iterator[Callable[..., Endpoint]]:
    made: list[Endpoint] = []

    def make(**overrides) -> Endpoint:
        made.append(Endpoint(cfg_factory(**overrides), zctx))
        return made[-1]

    yield make
    for e in made:
        e.close()


@pytest.fixture
def ep(endpoint_factory) -> Endpoint:
    return endpoint_factory()


@pytest.fixture
def client(ep) -> Iterator[DocumentsClient]:
    with ep.client() as c:
        yield c


def error_code(call: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(ServerError) as caught:
        call()
    return caught.value.code, str(caught.value)


def index_everything(cfg: Config) -> int:
    """What embedders and the indexer do, in SQLite only: pending chunks get new rows, copies
    get rows too (their vectors reused), in commits that promote complete replacements."""
    done = 0
    with Store(cfg.db_path) as store:
        while True:
            claimed = [cid for cid, _ in store.claim("test", 100, now=time.time(), lease_seconds=60)]
            copies = [cid for cid, _ in store.claim_copies(100)]
            if not claimed and not copies:
                return done
            ids = claimed + copies
            rows = store.committed_rows()
            store.commit_rows(list(zip(ids, range(rows, rows + len(ids)))), rows=rows + len(ids),
                              reused=len(copies))
            done += len(ids)


# --- the ops -------------------------------------------------------------------------------
def test_put_get_replace_supersede_delete(ep, client) -> None:
    first = client.put("guides/gout", GOUT, metadata={"year": 2024, "reviewed": True})
    assert first == {"outcome": "added", "key": "guides/gout", "version": 1, "chunks": first["chunks"],
                     "reused": 0, "superseded": None}
    assert first["chunks"] >= 2
    got = client.get("guides/gout")
    assert set(got) == {"key", "live"}
    live = got["live"]
    assert (live["version"], live["title"], live["content_type"], live["source"]) == (1, "Gout", "text/plain", "put")
    assert live["metadata"] == {"year": 2024, "reviewed": True} and live["bytes"] == len(GOUT.encode())
    assert live["chunk_states"] == {"pending": first["chunks"]}
    # Identical content, title, type and metadata: nothing new.
    assert client.put("guides/gout", GOUT, metadata={"year": 2024, "reviewed": True})["outcome"] == "unchanged"
    index_everything(ep.cfg)
    second = client.put("guides/gout", GOUT_V2, content_type="text/markdown", title="Gout, revised")
    assert (second["outcome"], second["version"], second["superseded"]) == ("replaced", 2, None)
    assert second["reused"] >= 1  # the unchanged opening chunk keeps its vector
    third = client.put("guides/gout", GOUT_V2.encode(), content_type="text/markdown")
    assert (third["outcome"], third["version"], third["superseded"]) == ("replaced", 3, 2)
    got = client.get("guides/gout")
    assert got["live"]["version"] == 1 and got["pending"]["version"] == 3
    assert got["pending"]["title"] == "Gout" and got["pending"]["content_type"] == "text/markdown"
    assert client.delete("guides/gout") == 2  # the live and the pending version
    assert error_code(lambda: client.get("guides/gout"))[0] == "not_found"
    s = client.stats()
    assert (s["puts"], s["added"], s["replaced"], s["unchanged"], s["deletes"]) == (4, 1, 2, 1, 1)
    assert s["work"] == 3 and s["bytes_received"] > 2 * len(GOUT_V2)


def test_delete_of_an_unknown_key_is_not_found(client) -> None:
    code, message = error_code(lambda: client.delete("never/was"))
    assert code == "not_found" and "never/was" in message
    client.put("k", "some words")
    client.delete("k")
    assert error_code(lambda: client.delete("k"))[0] == "not_found"  # a second delete finds nothing


@pytest.mark.parametrize("key, needle", [("", "empty"), ("k" * 65, "max_key_chars"), (42, "must be a string"),
                                         (None, "must be a string"), ("a\x00b", "control character")])
@pytest.mark.parametrize("op", ["put", "delete", "get"])
def test_a_bad_key_is_a_bad_request(client, op, key, needle) -> None:
    fields = {"key": key, "content": "words"} if op == "put" else {"key": key}
    code, message = error_code(lambda: client.call(op, **fields))
    assert code == "bad_request" and needle in message


def test_content_over_the_limit_is_too_large(ep, client) -> None:
    code, message = error_code(lambda: client.put("big", "a " * 2500))  # 5000 bytes > 4096
    assert code == "too_large" and "max_document_bytes" in message
    assert client.put("fits", "a " * 2048)["outcome"] == "added"  # exactly 4096 bytes
    assert client.stats()["errors"] == 1


def test_invalid_utf8_for_a_text_type_is_a_bad_request(client) -> None:
    code, message = error_code(lambda: client.put("bin", b"valid start \xff\xfe then junk", content_type="text/plain"))
    assert code == "bad_request" and "UTF-8" in message and "byte 12" in message


def test_an_unknown_content_type_is_a_bad_request(client) -> None:
    code, message = error_code(lambda: client.put("png", b"\x89PNG\r\n\x1a\n", content_type="image/png"))
    assert code == "bad_request" and "text/plain" in message and "application/pdf" in message


@pytest.mark.parametrize("metadata, needle", [
    ({"nested": {"a": 1}}, "flat map"), ({"list": [1]}, "flat map"), (["a"], "must be a map"),
    ({f"k{i}": i for i in range(5)}, "max_metadata_entries"), ({"note": "x" * 300}, "max_metadata_bytes")])
def test_metadata_not_a_flat_map_of_scalars_or_too_large(client, metadata, needle) -> None:
    code, message = error_code(lambda: client.put("m", "some words", metadata=metadata))
    assert code == "bad_request" and needle in message


def test_empty_text_is_a_bad_request(client) -> None:
    code, message = error_code(lambda: client.put("empty", " \n\n "))
    assert code == "bad_request" and "no text" in message


def test_bad_requests_store_nothing(ep, client) -> None:
    for bad in ({"key": ""}, {"content": b"\xff"}, {"content_type": "image/png"}, {"metadata": {"a": [1]}}):
        with pytest.raises(ServerError):
            client.call("put", **{"key": "k", "content": "words", **bad})
    with Store(ep.cfg.db_path) as store:
        assert store.conn.execute("SELECT count(*) FROM documents").fetchone()[0] == 0


def test_a_put_while_paused_is_accepted_and_stays_pending(ep, client) -> None:
    with Store(ep.cfg.db_path) as store:
        store.set_paused(True)
    reply = client.put("paused/doc", GOUT)
    assert reply["outcome"] == "added" and reply["chunks"] >= 2
    with Store(ep.cfg.db_path) as store:
        assert store.paused()  # the put did not resume anything
        assert store.stats().pending == reply["chunks"] and store.stats().indexed == 0
    assert client.get("paused/doc")["live"]["chunk_states"] == {"pending": reply["chunks"]}
    assert client.stats()["work"] == 1  # the embedders are told; paused, they claim nothing


def test_list_pages_by_key_and_never_splits_a_key(ep, client) -> None:
    for key in ("a", "b", "c"):
        client.put(key, f"first text of {key}")
    index_everything(ep.cfg)
    client.put("b", "second text of b")  # b: live v1 and pending v2
    every = client.list()
    assert [(d["key"], d["status"]) for d in every["documents"]] == [
        ("a", "live"), ("b", "live"), ("b", "pending"), ("c", "live")]
    assert every["next"] is None
    for limit in (1, 2, 3):
        seen, after = [], None
        for _ in range(10):
            page = client.list(limit=limit, after=after)
            seen += [(d["key"], d["version"]) for d in page["documents"]]
            if page["next"] is None:
                break
            after = page["next"]
        assert seen == [("a", 1), ("b", 1), ("b", 2), ("c", 1)], f"limit {limit}"
    assert [d["key"] for d in client.list(state="pending")["documents"]] == ["b"]
    assert [d["key"] for d in client.list(state="live", after="a")["documents"]] == ["b", "c"]
    assert client.list(state="failed")["documents"] == []
    for bad in ({"state": "dead"}, {"limit": 0}, {"limit": 51}, {"limit": True}, {"after": 3}):
        assert error_code(lambda: client.call("list", **bad))[0] == "bad_request"


def test_protocol_errors_get_replies_and_the_role_keeps_serving(ep, zctx) -> None:
    dealer = protocol.configure(zctx.socket(zmq.DEALER), hwm=10)
    dealer.connect(ep.cfg.endpoint("documents"))

    def ask(*frames: bytes) -> dict:
        dealer.send_multipart([b"", *frames])
        assert dealer.poll(int(PATIENCE * 1000)), "no reply"
        reply = dealer.recv_multipart()
        return protocol.unpack_map(reply[1], max_bytes=1 << 20)

    try:
        assert ask(protocol.pack({"v": 2, "id": 1, "op": "ping"}))["code"] == "bad_version"
        assert ask(protocol.pack(protocol.request("fly", 2)))["code"] == "unknown_op"
        assert ask(b"\xc1 not msgpack")["code"] == "bad_request"
        assert ask(protocol.pack(protocol.request("get", 3, key="k")), b"extra")["code"] == "bad_request"
        reply = ask(protocol.pack(protocol.request("ping", 4)))
        assert reply["ok"] and reply["pong"] and reply["id"] == 4
    finally:
        dealer.close(0)


def test_a_store_lock_held_too_long_is_busy_never_a_hang(endpoint_factory) -> None:
    # liveness 0.5 s, heartbeat 0.1 s: the role waits at most 0.2 s for SQLite's write lock
    ep = endpoint_factory(supervisor__liveness_seconds=0.5)
    assert ep.role.busy_timeout_ms() == 200
    with ep.client() as client:
        client.put("warm", "opens the connection")
        holder = sqlite3.connect(ep.cfg.db_path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another writer (ingest, a compaction) holds the lock
        try:
            code, message = error_code(lambda: client.put("k", "words"))
            assert code == "busy" and "try again" in message
            assert client.ping()  # the loop was never stuck
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert client.put("k", "words")["outcome"] == "added"


# --- sleep, heartbeat, boot ---------------------------------------------------------------
def exchange(role: DocumentsRole, dealer: zmq.Socket, op: str, now: float | None = None, **fields) -> dict:
    """One request, the role stepped by hand until its reply is there."""
    dealer.send_multipart([b"", protocol.pack(protocol.request(op, "r", **fields))])
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        role.loop(time.monotonic() if now is None else now)
        if dealer.poll(0, zmq.POLLIN):
            return protocol.unpack_map(dealer.recv_multipart()[1], max_bytes=1 << 20)
    raise AssertionError("no reply")


def test_idle_role_sleeps_and_closes_its_connection_stats_and_ping_wake_nothing(cfg_factory, zctx) -> None:
    cfg = cfg_factory(embedder__idle_seconds=30.0)
    role = DocumentsRole(cfg, zctx)
    role.initialize()
    dealer = protocol.configure(zctx.socket(zmq.DEALER), hwm=10)
    dealer.connect(cfg.endpoint("documents"))
    try:
        assert role.state_name() == "running" and role.store is None  # nothing held after boot
        role.loop(time.monotonic() + 31.0)  # idle for embedder.idle_seconds, as the indexer
        assert role.state_name() == "asleep" and role.sleeps == 1
        assert exchange(role, dealer, "stats")["state"] == "asleep"
        assert exchange(role, dealer, "ping")["pong"] and role.store is None and role.state_name() == "asleep"
        assert exchange(role, dealer, "put", key="k", content="some words")["outcome"] == "added"
        assert role.state_name() == "running" and role.store is not None
        started = time.monotonic()
        role.loop(started + 29.0)
        assert role.state_name() == "running"
        role.loop(started + 31.0)
        assert role.state_name() == "asleep" and role.store is None and role.sleeps == 2
        assert exchange(role, dealer, "get", key="k")["live"]["version"] == 1  # reopens on demand
        role.command({"op": "sleep"}, time.monotonic())  # `roxi sleep`
        assert role.state_name() == "asleep" and role.store is None
        role.command({"op": "wake"}, time.monotonic())  # `roxi wake`: running, nothing to load
        assert role.state_name() == "running"
    finally:
        dealer.close(0)
        role.shutdown()


def test_the_heartbeat_carries_counters_and_the_work_to_announce(cfg_factory, zctx) -> None:
    cfg = cfg_factory(supervisor__sleep_heartbeat_seconds=0.5)  # an asleep step waits that long
    beats = protocol.configure(zctx.socket(zmq.PULL), hwm=100)
    beats.bind(cfg.endpoint("heartbeat"))
    runner = Runner(DocumentsRole(cfg, zctx))
    dealer = protocol.configure(zctx.socket(zmq.DEALER), hwm=10)
    dealer.connect(cfg.endpoint("documents"))

    def beat() -> dict:
        assert beats.poll(int(PATIENCE * 1000))
        return protocol.parse_heartbeat(beats.recv())

    try:
        assert runner.boot() == 0
        runner.step(time.monotonic())
        ready = beat()
        assert (ready["role"], ready["state"], ready["work"]) == ("documents", "running", 0)
        runner.step(time.monotonic() + 60.0)  # a beat fell due (running), then idle: asleep ...
        assert beat()["state"] == "running"
        runner.step(time.monotonic() + 60.0)  # ... told at the next step
        assert beat()["state"] == "asleep"
        dealer.send_multipart([b"", protocol.pack(protocol.request("put", 1, key="k", content=GOUT))])
        wait_until(lambda: runner.step(time.monotonic()) and dealer.poll(0), timeout=PATIENCE, what="the put's reply")
        runner.step(time.monotonic())  # the role is awake now: that is told at once, not at the next beat
        woke = beat()
        while woke["state"] != "running":  # beats that fell due while the put was on its way
            woke = beat()
        assert woke["work"] == 1 and woke["puts"] == 1 and woke["added"] == 1
        assert woke["bytes_received"] > len(GOUT) and woke["state"] == "running"
        runner.step(time.monotonic() + 1.0)  # the next one when due, with the same count
        assert beat()["work"] == 1
    finally:
        dealer.close(0)
        beats.close(0)
        runner.close()


def test_a_store_it_cannot_use_is_a_boot_error(make_config, zctx) -> None:
    cfg = make_config()
    cfg.data_dir.mkdir(parents=True)
    cfg.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cfg.db_path.write_bytes(b"not a database at all" * 100)
    beats = protocol.configure(zctx.socket(zmq.PULL), hwm=10)
    beats.bind(cfg.endpoint("heartbeat"))
    runner = Runner(DocumentsRole(cfg, zctx))
    try:
        assert runner.boot() == 78  # BOOT_ERROR: not respawned in a loop
    finally:
        beats.close(0)
        runner.close()


def test_a_client_gets_a_timeout_when_nothing_answers(cfg_factory, zctx) -> None:
    cfg = cfg_factory()
    role = DocumentsRole(cfg, zctx)
    role.initialize()  # bound, but never stepped
    try:
        with DocumentsClient(cfg.endpoint("documents"), ctx=zctx, timeout=0.2) as c:
            with pytest.raises(Timeout):
                c.ping()
    finally:
        role.shutdown()


def test_a_tcp_endpoint_needs_curve_keys_and_admits_only_keyed_clients(cfg_factory, zctx) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = cfg_factory(network__documents_endpoint=f"tcp://127.0.0.1:{port}")
    assert keys.needs_keys(cfg, "documents") and not keys.needs_keys(cfg, "query")
    with pytest.raises(ValueError):
        keys.needs_keys(cfg, "control")  # not an endpoint for clients
    role = DocumentsRole(cfg, zctx)
    with pytest.raises(ConfigError, match="documents endpoint tcp://.*roxi keys generate"):
        role.initialize()  # no keys: a boot error, never an open tcp port
    role.shutdown()
    keys.generate(cfg)
    ep = Endpoint(cfg, zctx)
    try:
        with DocumentsClient.for_config(cfg, ctx=zctx, timeout=PATIENCE) as client:  # the default client key
            assert client.curve is not None and client.put("k", "over curve")["outcome"] == "added"
        for curve in (None, (*zmq.curve_keypair(), keys.client_keys(cfg)[2])):  # unkeyed, unknown key
            with Client(cfg.endpoint("documents"), ctx=zctx, timeout=1.0, curve=curve) as stranger:
                with pytest.raises(Timeout):
                    stranger.call("ping")
    finally:
        ep.close()


def test_restart_policy_of_the_documents_role_can_be_overridden(make_config) -> None:
    cfg = make_config(restart__documents__flap_count=2, restart__flap_count=7)
    assert cfg.restart_for("documents").flap_count == 2 and cfg.restart_for("query").flap_count == 7


# --- many clients at once ---------------------------------------------------------------------
PARAGRAPHS = [" ".join(f"p{p}w{i}." for i in range(20)) for p in range(6)]


def text_of(rng: random.Random) -> str:
    """A few paragraphs from a small pool: versions share chunks (reused vectors) or repeat."""
    return "\n\n".join(rng.sample(PARAGRAPHS, 2))


def test_concurrent_puts_and_deletes_of_one_key_leave_a_consistent_store(ep) -> None:
    keys = ["shared", "shared", "shared", "other"]  # mostly the one key
    replies: list[dict] = []
    failures: list[BaseException] = []
    stop_indexing = threading.Event()
    lock = threading.Lock()

    def client_thread(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with ep.client() as client:
                for _ in range(25):
                    key = rng.choice(keys)
                    try:
                        if rng.random() < 0.3:
                            client.delete(key)
                        else:
                            reply = client.put(key, text_of(rng), title=rng.choice([None, "T"]))
                            with lock:
                                replies.append(reply)
                    except ServerError as exc:
                        assert exc.code in ("not_found", "busy"), exc
        except BaseException as exc:
            failures.append(exc)

    def direct_writer() -> None:  # another writer on the same key, as `roxi ingest` would be
        rng = random.Random(99)
        try:
            with Store(ep.cfg.db_path) as store:
                for _ in range(10):
                    text = text_of(rng)
                    result = store.put_document(key="shared", content_hash=str(hash(text)), source="put",
                                                title="direct", size=len(text),
                                                chunks=chunk_rows(text, words=20, overlap=4))
                    with lock:
                        replies.append({"key": "shared", "outcome": result.outcome})
        except BaseException as exc:
            failures.append(exc)

    def indexer() -> None:
        try:
            while not stop_indexing.is_set():
                index_everything(ep.cfg)
                time.sleep(0.005)
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=client_thread, args=(seed,)) for seed in range(4)]
    workers.append(threading.Thread(target=direct_writer))
    background = threading.Thread(target=indexer)
    background.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=PATIENCE)
    stop_indexing.set()
    background.join(timeout=PATIENCE)
    assert not failures, failures
    with ep.client() as client:  # the last word, then everything indexed
        final = client.put("shared", "the final text of the shared document")
    index_everything(ep.cfg)

    with Store(ep.cfg.db_path) as store:
        q = store.conn.execute
        assert q("SELECT count(*) FROM chunks c LEFT JOIN documents d ON d.id = c.doc_id "
                 "WHERE d.id IS NULL").fetchone()[0] == 0, "a chunk without its document"
        assert q("SELECT key, status, count(*) FROM documents WHERE status != 'dead' GROUP BY key, status "
                 "HAVING count(*) > 1").fetchall() == [], "two live or two pending versions of a key"
        assert q("SELECT count(*) FROM chunks c JOIN documents d ON d.id = c.doc_id "
                 "WHERE (d.status = 'dead') != (c.state = 'dropped')").fetchone()[0] == 0, \
            "a dead version's chunk not dropped, or a dropped chunk of a live one"
        rows = [r[0] for r in q("SELECT row FROM chunks WHERE row IS NOT NULL ORDER BY row")]
        assert rows == list(range(store.committed_rows())), "rows are not each held by one chunk"
        for key in ("shared", "other"):
            versions = [r[0] for r in q("SELECT version FROM documents WHERE key=? ORDER BY version", (key,))]
            made = sum(1 for r in replies if r["key"] == key and r["outcome"] != "unchanged")
            made += key == "shared"  # the final put
            assert versions == list(range(1, made + 1)), f"{key}: versions {versions}, {made} made"
        doc = store.document("shared")
        assert set(doc) == {"key", "live"} and doc["live"]["version"] == final["version"]
        assert doc["live"]["chunk_states"] == {"indexed": final["chunks"]}
        assert store.stats().pending == 0
    assert ep.role.stats()["puts"] == sum(1 for r in replies if "version" in r) + 1
