"""Exposure: owner-only ipc sockets, and a tcp:// query endpoint that only keyed clients reach."""

from __future__ import annotations

import stat

import pytest
import zmq

from roxi_mp import errors, keys
from roxi_mp.client import Client, QueryClient
from roxi_mp.errors import Timeout
from roxi_mp.service import READY_STATES

from ..conftest import PATIENCE, free_port
from ..corpus import populate
from .test_pipeline import roxi


def test_ipc_sockets_live_in_an_owner_only_directory(system):
    s = system()
    run_dir = s.cfg.run_dir
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert {p.name for p in run_dir.iterdir()} >= {"query.sock", "control.sock", "heartbeat.sock"}
    assert all(s.cfg.endpoint(name).startswith("ipc://") for name in ("query", "control"))


def test_tcp_endpoint_needs_keys_then_admits_only_keyed_clients(system, make_config):
    cfg = make_config(network__query_endpoint=f"tcp://127.0.0.1:{free_port()}", hashing__dim=64)
    populate(cfg, rows=200)
    refused = roxi(cfg, "start")
    assert refused.returncode == errors.CONFIG
    assert refused.stderr.count("\n") == 1 and "roxi keys generate" in refused.stderr
    made = roxi(cfg, "keys", "generate")
    assert made.returncode == 0, made.stderr
    s = system(cfg)
    with QueryClient.for_config(cfg) as client:  # the default client key from `keys generate`
        hits = client.query("anything at all", k=3)
        assert len(hits) == 3
    unkeyed = Client(cfg.endpoint("query"), timeout=2.0)
    with pytest.raises(Timeout):
        unkeyed.call("ping")
    unkeyed.close()
    public, secret = zmq.curve_keypair()
    stranger = Client(cfg.endpoint("query"), timeout=2.0, curve=(public, secret, keys.client_keys(cfg)[2]))
    with pytest.raises(Timeout):
        stranger.call("ping")
    stranger.close()
    # The CLI uses the same key, and the server is unharmed by the refused handshakes.
    answered = roxi(cfg, "query", "anything", "-k", "2")
    assert answered.returncode == 0, answered.stderr
    # A second client key is admitted once the query server restarts.
    assert roxi(cfg, "keys", "generate", "--client", "alice").returncode == 0
    before = s.pid("query")
    assert roxi(cfg, "restart", "query").returncode == 0
    s.wait_for(lambda: s.pid("query") != before and s.role("query")["state"] in READY_STATES, timeout=PATIENCE,
               what="a new query server")
    alice = QueryClient.for_config(cfg, curve=keys.client_keys(cfg, cfg.data_dir / "keys" / "alice.key_secret"))
    assert alice.ping()
    alice.close()
