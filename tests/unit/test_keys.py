"""CURVE keys: generation, file modes, and the refusal to open tcp:// without them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import zmq

from roxi_mp import keys
from roxi_mp.config import Config
from roxi_mp.errors import BadInput, ConfigError


def tcp_config(tmp_path: Path) -> Config:
    cfg = Config(data_dir=tmp_path)
    cfg.network.query_endpoint = "tcp://127.0.0.1:5555"
    return cfg


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_makes_owner_only_server_and_client_keys(tmp_path: Path) -> None:
    cfg = tcp_config(tmp_path)
    made = keys.generate(cfg)
    root = tmp_path / "keys"
    assert made["server"] == root / "server.key"
    assert mode(root) == 0o700 and mode(root / "clients") == 0o700
    assert mode(root / "server.key_secret") == 0o600 and mode(root / "client.key_secret") == 0o600
    assert (root / "clients" / "client.key").read_bytes() == (root / "client.key").read_bytes()
    public, secret = keys.server_keys(cfg)
    assert len(public) == len(secret) == 40  # z85 of 32 bytes
    client_public, client_secret, server_public = keys.client_keys(cfg)
    assert server_public == public and client_public != public
    # A second client: the server key pair is kept, not replaced.
    again = keys.generate(cfg, "alice")
    assert "server" not in again and keys.server_keys(cfg) == (public, secret)
    assert sorted(p.name for p in (root / "clients").iterdir()) == ["alice.key", "client.key"]


@pytest.mark.parametrize("name", ["", "server", "../evil", "a/b", "x" * 65, "-lead"])
def test_bad_client_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(BadInput):
        keys.generate(tcp_config(tmp_path), name)


def test_an_existing_client_is_not_overwritten(tmp_path: Path) -> None:
    cfg = tcp_config(tmp_path)
    keys.generate(cfg, "bob")
    before = (tmp_path / "keys" / "bob.key_secret").read_bytes()
    with pytest.raises(BadInput, match="already exists"):
        keys.generate(cfg, "bob")
    assert (tmp_path / "keys" / "bob.key_secret").read_bytes() == before


def test_tcp_without_keys_is_refused_with_the_remedy(tmp_path: Path) -> None:
    cfg = tcp_config(tmp_path)
    assert keys.needs_keys(cfg) and not keys.needs_keys(Config(data_dir=tmp_path))
    with pytest.raises(ConfigError, match="roxi keys generate"):
        keys.server_keys(cfg)
    keys.generate(cfg)
    for allowed in (tmp_path / "keys" / "clients").iterdir():
        allowed.unlink()
    with pytest.raises(ConfigError, match="no client is allowed"):
        keys.server_keys(cfg)


def test_a_corrupt_key_file_is_a_config_error(tmp_path: Path) -> None:
    cfg = tcp_config(tmp_path)
    keys.generate(cfg)
    (tmp_path / "keys" / "server.key_secret").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="server.key_secret"):
        keys.server_keys(cfg)


def test_secure_pair_talks_and_a_stranger_is_refused(tmp_path: Path) -> None:
    """The sockets themselves, in-process: a keyed client gets an answer, others nothing."""
    cfg = tcp_config(tmp_path)
    keys.generate(cfg)
    ctx = zmq.Context()
    server = ctx.socket(zmq.ROUTER)
    auth = keys.secure_server(cfg, ctx, server)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    try:
        def ask(curve) -> bytes | None:
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            if curve is not None:
                keys.secure_client(sock, curve)
            sock.connect(f"tcp://127.0.0.1:{port}")
            sock.send(b"hello")
            got = None
            if server.poll(1500):
                ident, body = server.recv_multipart()
                server.send_multipart([ident, body + b"!"])
                got = sock.recv() if sock.poll(1500) else None
            sock.close()
            return got

        assert ask(keys.client_keys(cfg)) == b"hello!"
        assert ask(None) is None  # no CURVE at all
        stranger_public, stranger_secret = zmq.curve_keypair()
        server_public = keys.client_keys(cfg)[2]
        assert ask((stranger_public, stranger_secret, server_public)) is None  # unknown key
        assert ask(keys.client_keys(cfg)) == b"hello!"
    finally:
        server.close(0)
        auth.stop()
        ctx.term()
