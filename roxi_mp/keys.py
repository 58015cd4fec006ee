"""CURVE keys: what lets a `tcp://` client endpoint exist at all.

By default every socket is an ipc socket in a 0700 run directory, so only the owner can
connect. A `tcp://` endpoint for clients (the query socket, the documents socket) is
reachable by anyone who can route to it, so it only starts with CurveZMQ (encryption and
authentication, via pyzmq's zmq.auth): the server holds the server key pair, and only
clients whose public key is in `<keys_dir>/clients/` are let in; any other client is
dropped during the handshake and never reaches a handler. Both endpoints follow the same
rule with the same keys (`needs_keys(cfg, name)`, `secure_server(..., name=)`).
`roxi keys generate` makes the server key pair (once) and a client key pair; hand a
client its `<name>.key_secret` and `server.key` files. Clients added later are accepted
after `roxi restart query` (and `roxi restart documents`).

Layout of `<data_dir>/keys` (0700; secret files 0600):
  server.key, server.key_secret      the servers' key pair (query and documents)
  <name>.key, <name>.key_secret      a client's key pair
  clients/<name>.key                 public keys allowed to connect
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import zmq
import zmq.auth

from .config import Config
from .errors import BadInput, ConfigError

SERVER = "server"
#: endpoints clients connect to: a tcp:// one needs CURVE keys
CLIENT_ENDPOINTS = ("query", "documents")
#: the client key `roxi query` and the clients' for_config (QueryClient, DocumentsClient) use
#: unless ROXI_CLIENT_KEY names another
DEFAULT_CLIENT = "client"
ENV_CLIENT_KEY = "ROXI_CLIENT_KEY"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def keys_dir(cfg: Config) -> Path:
    return Path(cfg.network.keys_dir) if cfg.network.keys_dir else cfg.data_dir / "keys"


def clients_dir(cfg: Config) -> Path:
    return keys_dir(cfg) / "clients"


def needs_keys(cfg: Config, name: str = "query") -> bool:
    """Whether the client endpoint `name` ("query" or "documents") is tcp://, so CURVE."""
    if name not in CLIENT_ENDPOINTS:
        raise ValueError(f"no client endpoint {name!r} (known: {', '.join(CLIENT_ENDPOINTS)})")
    return cfg.endpoint(name).startswith("tcp://")


def generate(cfg: Config, client: str = DEFAULT_CLIENT) -> dict[str, Path]:
    """Create the server key pair if missing, and a new client key pair named `client`."""
    if not _NAME.match(client) or client == SERVER:
        raise BadInput(f"client name {client!r}: letters, digits, '-' and '_' (up to 64), not {SERVER!r}")
    root = keys_dir(cfg)
    for d in (root, clients_dir(cfg)):
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(d, 0o700)
    if (root / f"{client}.key_secret").exists():
        raise BadInput(f"client key {client!r} already exists in {root}")
    made = {}
    if not (root / f"{SERVER}.key_secret").exists():
        zmq.auth.create_certificates(root, SERVER)
        made["server"] = root / f"{SERVER}.key"
    public, secret = zmq.auth.create_certificates(root, client)
    for path in (root / f"{SERVER}.key_secret", secret):
        os.chmod(path, 0o600)
    allowed = clients_dir(cfg) / f"{client}.key"
    shutil.copyfile(public, allowed)
    made.update(client_secret=Path(secret), server_public=root / f"{SERVER}.key", allowed=allowed)
    return made


def _load(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read CURVE key {path}: {exc}") from None
    if secret and not secret_key:
        raise ConfigError(f"{path} holds no secret key")
    return public, secret_key


def server_keys(cfg: Config, name: str = "query") -> tuple[bytes, bytes]:
    """The servers' key pair; ConfigError saying how to make one if there is none (`name`:
    the endpoint that asks, for the message)."""
    path = keys_dir(cfg) / f"{SERVER}.key_secret"
    if not path.exists():
        raise ConfigError(f"{name} endpoint {cfg.endpoint(name)} is tcp:// and needs CURVE keys; "
                          f"run `roxi keys generate` (none in {keys_dir(cfg)})")
    public, secret = _load(path, secret=True)
    if not any(clients_dir(cfg).glob("*.key")):
        raise ConfigError(f"no client is allowed to connect: {clients_dir(cfg)} holds no public key "
                          f"(run `roxi keys generate --client NAME`)")
    return public, secret  # type: ignore[return-value]


def client_keys(cfg: Config, secret_file: Path | None = None) -> tuple[bytes, bytes, bytes]:
    """(client public, client secret, server public) for a client of a tcp:// endpoint."""
    root = keys_dir(cfg)
    chosen = secret_file or os.environ.get(ENV_CLIENT_KEY) or root / f"{DEFAULT_CLIENT}.key_secret"
    public, secret = _load(Path(chosen), secret=True)
    server_public, _ = _load(root / f"{SERVER}.key", secret=False)
    return public, secret, server_public  # type: ignore[return-value]


def secure_server(cfg: Config, ctx: zmq.Context, sock: zmq.Socket, *, name: str = "query"):
    """Make `sock` (the `name` endpoint's) a CURVE server admitting the allowed clients;
    returns the authenticator (stop it when the socket closes). Call before bind."""
    from zmq.auth.thread import ThreadAuthenticator

    public, secret = server_keys(cfg, name)
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(clients_dir(cfg)))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth


def secure_if_needed(cfg: Config, ctx: zmq.Context, sock: zmq.Socket, name: str):
    """`secure_server` when the `name` endpoint is tcp://, else nothing: the authenticator or None."""
    return secure_server(cfg, ctx, sock, name=name) if needs_keys(cfg, name) else None


def secure_client(sock: zmq.Socket, keys: tuple[bytes, bytes, bytes]) -> None:
    """Make `sock` a CURVE client with (public, secret, server public). Call before connect."""
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = keys
