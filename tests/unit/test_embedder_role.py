"""The embedder role driven directly: sleep when idle, wake on work, yield to queries."""

from __future__ import annotations

import zmq
import pytest

from roxi_mp import protocol
from roxi_mp.roles.embedder import EState, Embedder
from roxi_mp.store import Store


@pytest.fixture
def setup(make_config):
    cfg = make_config(embedder__batch_size=16, embedder__yield_batch_size=4, embedder__idle_seconds=5.0,
                      embedder__wake_check_seconds=30.0, embedder__poll_seconds=0.01,
                      embedder__busy_cpu_percent=100.0)  # never yield to this busy test machine
    cfg.data_dir.mkdir(parents=True)
    cfg.run_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    ctx = zmq.Context()
    sink = protocol.configure(ctx.socket(zmq.PULL), hwm=100)
    sink.bind(cfg.endpoint("vectors"))
    emb = Embedder(cfg, ctx)
    emb.initialize()
    yield cfg, emb, sink
    emb.shutdown()
    sink.close(0)
    ctx.term()


def add_chunks(cfg, n: int, tag: str = "a") -> None:
    with Store(cfg.db_path) as store:
        store.add_document(content_hash=f"doc-{tag}", source=tag, title=tag, size=1,
                           chunks=((i, f"text {tag} {i}", f"h{tag}{i}") for i in range(n)))


def received(sink) -> list[int]:
    ids = []
    while sink.poll(200):
        header = protocol.unpack_map(sink.recv_multipart()[0], max_bytes=1 << 20)
        ids += header["chunk_ids"]
    return ids


def test_full_batches_when_no_queries(setup):
    cfg, emb, sink = setup
    add_chunks(cfg, 20)
    emb.loop(1000.0)
    assert len(received(sink)) == 16


def test_yields_to_query_traffic_with_small_batches(setup):
    cfg, emb, sink = setup
    add_chunks(cfg, 20)
    emb.command({"op": "queries"}, 1000.0)
    emb.loop(1001.0)  # within yield_seconds of the last query activity
    assert len(received(sink)) == 4
    assert emb.next_claim >= 1001.0 + cfg.embedder.yield_pause_seconds
    emb.loop(1010.0)  # queries stopped long ago: full batches again
    assert len(received(sink)) == 16


def test_sleeps_when_idle_and_wakes_on_work(setup):
    cfg, emb, sink = setup
    emb.last_work = 1000.0
    emb.loop(1001.0)
    assert emb.state is EState.AWAKE  # idle only 1 s of 5
    emb.loop(1006.0)
    assert emb.state is EState.ASLEEP and not emb.model.loaded
    add_chunks(cfg, 3)
    emb.loop(1007.0)  # no notice and wake_check_seconds not due: stays asleep, no model
    assert emb.state is EState.ASLEEP and not emb.model.loaded
    emb.command({"op": "work"}, 1007.5)
    emb.loop(1008.0)
    assert emb.state is EState.AWAKE and emb.model.loaded
    emb.loop(1008.1)
    assert sorted(received(sink)) == [1, 2, 3]


def test_asleep_finds_work_at_the_periodic_check(setup):
    cfg, emb, sink = setup
    emb.sleep(1000.0)
    add_chunks(cfg, 2)
    emb.loop(1000.0 + cfg.embedder.wake_check_seconds + 0.1)
    assert emb.state is EState.AWAKE


def test_sleep_and_wake_commands(setup):
    _, emb, _ = setup
    emb.command({"op": "sleep"}, 1000.0)
    assert emb.state is EState.ASLEEP and emb.info()["state"] == "asleep"
    emb.command({"op": "wake"}, 1001.0)
    assert emb.state is EState.AWAKE and emb.info()["model_loaded"] is True
