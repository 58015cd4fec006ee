"""The query server's embedding model, held in a child process that deep sleep ends.

A model runtime cannot give all its memory back: once onnxruntime and tokenizers are
imported and a session has run, ~15 MB of anonymous memory stay in the process after
unloading, even after gc, malloc_trim and dropping the libraries' file pages (measured
2026-11-27: RSS 27 MB before, 149 loaded and used, 42 after), which would keep a sleeping
query server well above its floor. So for heavy backends the
query server embeds through `ModelProcess`, an Embedder whose model lives in
`python -m roxi_mp.model_process`: `load()` starts it, `unload()` ends it, and the process
exit returns every page. It dies with its parent (PR_SET_PDEATHSIG plus a parent-pid
check), and every wait on it is bounded.

The two talk over a Unix socket pair made at spawn, not ZeroMQ: each message is a 4-byte
little-endian length and a msgpack map, a reply's vectors follow their map as raw float32.
A query's round trip is on the critical path of every text query, and a ZeroMQ message
crosses two I/O threads each way: the pair took the model process's overhead from ~0.3 ms
to ~0.1 ms (issue 21), and a request is in the child's socket the moment `send` returns,
so the caller can go on with the lexical leg at once.

Replies come in the order of their requests. A caller may send a text and never read its
vector (the query failed in between: its lexical leg raised), so each request is numbered
and a new one first reads and drops every reply still unread: a query never gets the
vector of an earlier text, and the abandoned waiter, asked later, refuses.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Callable, Sequence

import numpy as np

from . import config as config_mod
from . import protocol
from .embedders import EmbedError, make_embedder
from .embedders.base import Embedder, check_texts
from .errors import BOOT_ERROR, ConfigError, RoxiError
from .protocol import ProtocolError

#: seconds the child may take to load its model and answer its first ping
START_TIMEOUT = 60.0
#: seconds one encode request may take
ENCODE_TIMEOUT = 60.0
#: seconds a child that closed its end may take to exit, for its exit code
EXIT_WAIT = 2.0
#: the length before each message
LENGTH = struct.Struct("<I")
#: largest request (texts) and reply map, bytes: a query text is at most query.max_query_chars
MAX_MESSAGE_BYTES = 64 << 20
#: largest reply matrix, rows (a query embeds one text; the bench a few)
MAX_ROWS = 4096


class ChildGone(Exception):
    """The other end closed, or a message was cut short."""


def send_message(sock: socket.socket, msg: dict, payload: bytes | memoryview = b"") -> None:
    body = protocol.pack(msg)
    sock.sendall(LENGTH.pack(len(body)) + body)
    if len(payload):
        sock.sendall(payload)


def recv_exact(sock: socket.socket, size: int) -> bytearray:
    """Exactly `size` bytes (the socket's timeout bounds each wait); ChildGone at EOF."""
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ChildGone("connection closed")
        got += n
    return buf


def recv_message(sock: socket.socket) -> dict:
    (size,) = LENGTH.unpack(recv_exact(sock, LENGTH.size))
    if size > MAX_MESSAGE_BYTES:
        raise ChildGone(f"message of {size} bytes exceeds {MAX_MESSAGE_BYTES}")
    return protocol.unpack_map(bytes(recv_exact(sock, size)), max_bytes=MAX_MESSAGE_BYTES)


class ModelProcess(Embedder):
    """An Embedder whose model runs in a child process (see the module docstring)."""

    def __init__(self, cfg: config_mod.Config) -> None:
        inner = make_embedder(cfg)  # cheap: only its id and dimension are used here
        self.model_id, self.dim = inner.model_id, inner.dim
        self.cfg = cfg
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        # Requests sent and replies read on the current pair, and the pair's number: a
        # waiter knows its request by (pair, number).
        self.pair = self.sent = self.read = 0

    @property
    def loaded(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def load(self) -> None:
        if self.loaded:
            return
        self.unload()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "roxi_mp.model_process", *self.cfg.to_argv(), "--fd", str(theirs.fileno())],
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),))
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.pair, self.sent, self.read = self.pair + 1, 0, 0
        try:  # the child answers once its model is loaded
            self._exchange({"op": "ping"}, time.monotonic() + START_TIMEOUT)
        except (OSError, ChildGone, RoxiError):
            code = self._exit_code()
            self.unload()
            if code is not None:
                raise ConfigError(f"the query model process exited with {code} while starting "
                                  f"(see the query log)") from None
            raise EmbedError(f"the query model process did not start within {START_TIMEOUT:g} s") from None

    def _exit_code(self) -> int | None:
        """The child's exit code if it is ending (its end of the pair closed first), else None."""
        try:
            return self.proc.wait(timeout=EXIT_WAIT) if self.proc is not None else None
        except subprocess.TimeoutExpired:
            return None

    def unload(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
            self.proc = None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode_later(texts)()

    def encode_later(self, texts: Sequence[str]) -> Callable[[], np.ndarray]:
        """Send `texts` to the model process now; the returned function waits for their
        vectors (bounded by ENCODE_TIMEOUT), so the caller works while the model computes."""
        texts = list(check_texts(texts))
        if not texts:
            return lambda: np.zeros((0, self.dim), dtype=np.float32)
        if len(texts) > MAX_ROWS:
            raise EmbedError(f"the query model process embeds at most {MAX_ROWS} texts at once")
        self.load()
        deadline = time.monotonic() + ENCODE_TIMEOUT
        self._guard(lambda: self._send(deadline, {"op": "encode", "texts": texts}))
        ticket = (self.pair, self.sent)
        return lambda: self._vectors(deadline, len(texts), ticket)

    def _vectors(self, deadline: float, count: int, ticket: tuple[int, int]) -> np.ndarray:
        if ticket != (self.pair, self.read + 1):
            raise EmbedError("query model process: a newer request was sent before this one's vectors were read")

        def receive() -> np.ndarray:
            reply, data = self._reply(deadline)
            self._check(reply)
            rows = reply.get("rows")
            if not isinstance(rows, int) or isinstance(rows, bool) or rows != count:
                raise ChildGone(f"reply of {rows!r} rows for {count} texts")
            return np.frombuffer(data, dtype="<f4").reshape(rows, self.dim).astype(np.float32, copy=False)
        return self._guard(receive)

    def _send(self, deadline: float, msg: dict) -> None:
        """Send a request, once every earlier reply is read (and dropped if nobody did)."""
        while self.read < self.sent:
            self._reply(deadline)
        send_message(self._timed(deadline), msg)
        self.sent += 1

    def _reply(self, deadline: float) -> tuple[dict, bytearray]:
        """The next reply: its map and the vectors after it (none unless ok with rows)."""
        sock = self._timed(deadline)
        reply = recv_message(sock)
        rows = reply.get("rows", 0) if reply.get("ok") else 0  # a pong has none
        if not isinstance(rows, int) or isinstance(rows, bool) or not 0 <= rows <= MAX_ROWS:
            raise ChildGone(f"reply of {rows!r} rows")
        data = recv_exact(sock, rows * self.dim * 4)
        self.read += 1
        return reply, data

    def _call(self, msg: dict, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        return self._guard(lambda: self._exchange(msg, deadline))

    def _exchange(self, msg: dict, deadline: float) -> dict:
        self._send(deadline, msg)
        reply, _ = self._reply(deadline)
        self._check(reply)
        return reply

    def _timed(self, deadline: float) -> socket.socket:
        if self.sock is None:
            raise ChildGone("stopped before it answered")
        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        return self.sock

    @staticmethod
    def _check(reply: dict) -> None:
        if not reply.get("ok"):
            raise RoxiError(str(reply.get("message", "error")))

    def _guard(self, step: Callable[[], object]):
        """Run one exchange step; a timeout, a closed pair or a garbled message end the child
        (replaced on the next call) and surface as EmbedError; the child's own refusal of
        the texts leaves it running."""
        try:
            return step()
        except RoxiError as exc:
            if isinstance(exc, ProtocolError):
                self.unload()
            raise EmbedError(f"query model process: {exc}") from None
        except (OSError, ChildGone) as exc:  # socket.timeout is an OSError
            self.unload()
            what = "no answer in time" if isinstance(exc, socket.timeout) else str(exc) or type(exc).__name__
            raise EmbedError(f"query model process: {what}") from None


# --- the child -----------------------------------------------------------------------
def serve(cfg: config_mod.Config, sock: socket.socket, parent: int) -> int:
    model = make_embedder(cfg)
    model.load()
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    try:
        while not stop["flag"] and os.getppid() == parent:
            # Wait for a request a second at a time (to notice a parent gone); once one
            # starts, it is read whole within ENCODE_TIMEOUT.
            if not select.select([sock], [], [], 1.0)[0]:
                continue
            sock.settimeout(ENCODE_TIMEOUT)
            try:
                msg = recv_message(sock)
            except (ChildGone, OSError, ProtocolError):
                return 0  # the query server went away, or spoke garbage: nothing to serve
            reply, payload = answer(model, msg)
            send_message(sock, reply, payload)
    except (ChildGone, OSError):
        return 0  # the query server closed its end while we answered
    finally:
        sock.close()
    return 0


def answer(model: Embedder, msg: dict) -> tuple[dict, bytes | memoryview]:
    """The reply to one request: (map, raw float32 vectors or b"")."""
    op = msg.get("op")
    if op == "ping":
        return {"ok": True, "pong": True}, b""
    if op != "encode":
        return {"ok": False, "message": f"unknown op {op!r}"}, b""
    try:
        vectors = np.ascontiguousarray(model.encode(msg.get("texts") or []), dtype="<f4")
    except RoxiError as exc:  # texts refused, or the model failed: the child lives on
        return {"ok": False, "message": str(exc)}, b""
    return {"ok": True, "rows": int(vectors.shape[0])}, memoryview(vectors).cast("B")


def main(argv: list[str] | None = None) -> int:
    from .process import child_parser, die_with_parent

    parser = child_parser("roxi_mp.model_process")
    parser.add_argument("--fd", type=int, required=True, help="this end of the socket pair")
    args = parser.parse_args(argv)
    parent = os.getppid()
    die_with_parent()
    sock = socket.socket(fileno=args.fd)
    try:
        cfg = config_mod.load(args.config, data_dir=args.data_dir)
        return serve(cfg, sock, parent)
    except ConfigError as exc:
        print(f"roxi: query model process: {exc}", file=sys.stderr)
        return BOOT_ERROR


if __name__ == "__main__":
    sys.exit(main())
