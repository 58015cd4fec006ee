"""Python clients for the query server, the documents endpoint and the supervisor's control socket.

All are request/reply over a DEALER socket (see roxi_mp.protocol for the frames). Each
request carries a fresh id and the client discards replies with another id: a late answer
to a request that already timed out must never be taken for the answer to the next one
(the ZeroMQ guide's lazy-pirate lesson). After a timeout the socket is closed with
LINGER=0 and a new one is made on the next call.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from . import keys, protocol
from .config import Config
from .errors import E_ERROR, NotRunning, ServerError, Timeout

if TYPE_CHECKING:
    import numpy as np

#: default time to wait for a reply, seconds
DEFAULT_TIMEOUT = 10.0
#: longer wait for the reply to a put of bytes, which the server may extract after the
#: documents queued before it, seconds: (documents.max_pending_extractions + 1) times
#: extract.timeout_seconds by default (270)
DEFAULT_EXTRACT_WAIT = 9 * 30.0


class Client:
    """Request/reply client with id matching and a bounded wait."""

    def __init__(self, endpoint: str, *, timeout: float = DEFAULT_TIMEOUT,
                 ctx: zmq.Context | None = None, max_message_bytes: int = 64 << 20,
                 curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.endpoint = endpoint
        self.curve = curve  # (client public, client secret, server public) for a CURVE server
        self.timeout = timeout
        self.ctx = ctx or zmq.Context.instance()
        self.max_message_bytes = max_message_bytes
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid()}-{time.monotonic_ns() % 1_000_000}-"
        self._sock: zmq.Socket | None = None
        self._poller = zmq.Poller()  # one for the socket's life (Socket.poll builds one per call)

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            if self.endpoint.startswith("ipc://") and not Path(self.endpoint[6:]).exists():
                raise NotRunning(f"nothing listens on {self.endpoint}")
            self._sock = protocol.configure(self.ctx.socket(zmq.DEALER), hwm=100,
                                            max_message_bytes=self.max_message_bytes)
            if self.curve is not None:
                keys.secure_client(self._sock, self.curve)
            self._sock.connect(self.endpoint)
            self._poller.register(self._sock, zmq.POLLIN)
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._poller.unregister(self._sock)
            self._sock.close(0)
            self._sock = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call_raw(self, op: str, *, frames: list[Any] = (), timeout: float | None = None,
                 **fields: Any) -> tuple[dict, list[bytes]]:
        """Send one request; return (reply map, extra frames). Raises ServerError/Timeout."""
        return self.receive(self.send(op, frames=frames, timeout=timeout, **fields))

    def send(self, op: str, *, frames: list[Any] = (), timeout: float | None = None,
             **fields: Any) -> tuple[str, float, float]:
        """The first half of `call_raw`: send one request and return what `receive` needs
        to wait for its reply (the caller may do other work meanwhile)."""
        sock = self._socket()
        request_id = self._prefix + str(next(self._ids))
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        # A DEALER's send blocks while no peer can take the message (the server is not up,
        # or refused our CURVE keys in the handshake): the send has the same deadline. It is
        # tried at once first; waiting (a poll, a Poller built per call) only when refused.
        message = [b"", protocol.pack(protocol.request(op, request_id, **fields)), *frames]
        try:
            try:
                sock.send_multipart(message, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                if not sock.poll(int(wait * 1000), zmq.POLLOUT):
                    raise
                sock.send_multipart(message, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.close()
            raise Timeout(f"could not send to {self.endpoint} within {wait:g} s") from None
        return request_id, deadline, wait

    def receive(self, sent: tuple[str, float, float]) -> tuple[dict, list[bytes]]:
        """The second half of `call_raw`: the reply to a request `send` sent, by its deadline."""
        request_id, deadline, wait = sent
        sock = self._socket()
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._poller.poll(int(left * 1000)):
                self.close()  # a late reply must not reach the next request
                raise Timeout(f"no reply from {self.endpoint} within {wait:g} s")
            reply_frames = sock.recv_multipart()
            body = reply_frames[1:] if reply_frames[:1] == [b""] else reply_frames
            if not body:
                continue
            reply = protocol.unpack_map(body[0], max_bytes=self.max_message_bytes)
            if reply.get("id") != request_id:
                continue  # an answer to an earlier, abandoned request
            if not reply.get("ok"):
                raise ServerError(str(reply.get("code", E_ERROR)), str(reply.get("message", "error")))
            return reply, body[1:]

    def call(self, op: str, *, timeout: float | None = None, **fields: Any) -> dict:
        return self.call_raw(op, timeout=timeout, **fields)[0]


class QueryClient(Client):
    """Client of the query server: `QueryClient.for_config(cfg).query("gout", k=5)`."""

    @classmethod
    def for_config(cls, cfg: Config, **kwargs: Any) -> "QueryClient":
        kwargs.setdefault("timeout", cfg.limits.request_timeout_seconds)
        if keys.needs_keys(cfg, "query") and "curve" not in kwargs:
            kwargs["curve"] = keys.client_keys(cfg)
        return cls(cfg.endpoint("query"), **kwargs)

    def query(self, text: str, *, k: int = 10, with_text: bool = True, mode: str | None = None,
              fusion: str | None = None, weights: dict[str, float] | None = None) -> list[dict]:
        """The hits of a text query (see `search` for the whole reply)."""
        return self.search(text, k=k, with_text=with_text, mode=mode, fusion=fusion, weights=weights)["hits"]

    def search(self, text: str, *, k: int = 10, with_text: bool = True, mode: str | None = None,
               fusion: str | None = None, weights: dict[str, float] | None = None) -> dict:
        """The whole reply of a text query: hits, coverage, generation, mode, rows, took_ms.
        `mode` (hybrid, dense, lexical), `fusion` (rrf, weighted) and `weights` ({"dense",
        "lexical"} in [0, 1]) override the server's [query] settings for this query."""
        fields = {name: value for name, value in (("mode", mode), ("fusion", fusion), ("weights", weights))
                  if value is not None}
        return self.call("query", text=text, k=k, with_text=with_text, **fields)

    def query_vector(self, vector: np.ndarray, *, k: int = 10, with_text: bool = True) -> list[dict]:
        import numpy as np  # only a vector query needs it: the CLI and supervisor never do
        meta, buf = protocol.encode_array(np.asarray(vector, dtype=np.float32))
        reply, _ = self.call_raw("query", frames=[buf], k=k, with_text=with_text, **meta)
        return reply["hits"]

    def stats(self) -> dict:
        return self.call("stats")

    def ping(self) -> bool:
        return bool(self.call("ping").get("pong"))


class DocumentsClient(Client):
    """Client of the documents endpoint: `DocumentsClient.for_config(cfg).put("k", "text")`.

    A put answers once the document is stored (its chunks pending), not once it is
    searchable: `get(key)` shows its chunks' states. A put of bytes (a PDF, an HTML page,
    a Word document) answers once the server has extracted its text, which may wait for
    the documents before it: it waits up to `extract_wait` seconds longer than other
    requests. Error replies raise ServerError with the reply's code (not_found,
    bad_request, too_large, busy, ...)."""

    def __init__(self, endpoint: str, *, extract_wait: float = DEFAULT_EXTRACT_WAIT, **kwargs: Any) -> None:
        super().__init__(endpoint, **kwargs)
        self.extract_wait = extract_wait

    @classmethod
    def for_config(cls, cfg: Config, **kwargs: Any) -> "DocumentsClient":
        kwargs.setdefault("timeout", cfg.limits.request_timeout_seconds)
        # The server's own bound: every waiting document and this one take their whole time.
        kwargs.setdefault("extract_wait", (cfg.documents.max_pending_extractions + 1) * cfg.extract.timeout_seconds)
        if keys.needs_keys(cfg, "documents") and "curve" not in kwargs:
            kwargs["curve"] = keys.client_keys(cfg)
        return cls(cfg.endpoint("documents"), **kwargs)

    def put(self, key: str, content: str | bytes, *, content_type: str | None = None, title: str | None = None,
            metadata: dict[str, Any] | None = None, timeout: float | None = None) -> dict:
        """Store `content` as the newest version of `key`: {"outcome": added|replaced|unchanged,
        "key", "version", "chunks", "reused", "superseded"}. Bytes with no content_type are
        sniffed by the server (PDF, HTML, DOCX, else UTF-8 text)."""
        fields: dict[str, Any] = {"key": key, "content": content}
        for name, value in (("content_type", content_type), ("title", title), ("metadata", metadata)):
            if value is not None:
                fields[name] = value
        if timeout is None and not isinstance(content, str):
            timeout = self.timeout + self.extract_wait  # it may be extracted, after others
        reply = self.call("put", timeout=timeout, **fields)
        return {name: reply[name] for name in ("outcome", "key", "version", "chunks", "reused", "superseded")}

    def delete(self, key: str) -> int:
        """Make every version of `key` dead; returns how many there were (ServerError not_found if none)."""
        return self.call("delete", key=key)["deleted"]

    def get(self, key: str) -> dict:
        """{"key", "live"?: {...}, "pending"?: {...}}, each version with its chunk counts by state."""
        reply = self.call("get", key=key)
        return {name: reply[name] for name in ("key", "live", "pending") if name in reply}

    def list(self, *, state: str | None = None, after: str | None = None, limit: int | None = None) -> dict:
        """One page: {"documents": [...], "next": the `after` of the next page, or None}."""
        fields = {name: value for name, value in (("state", state), ("after", after), ("limit", limit))
                  if value is not None}
        reply = self.call("list", **fields)
        return {"documents": reply["documents"], "next": reply["next"]}

    def stats(self) -> dict:
        return self.call("stats")

    def ping(self) -> bool:
        return bool(self.call("ping").get("pong"))


class ControlClient(Client):
    """Client of the supervisor's control socket."""

    @classmethod
    def for_config(cls, cfg: Config, **kwargs: Any) -> "ControlClient":
        kwargs.setdefault("timeout", cfg.limits.request_timeout_seconds)
        return cls(cfg.endpoint("control"), **kwargs)

    def command(self, name: str, *, timeout: float | None = None, **args: Any) -> dict:
        return self.call(name, timeout=timeout, **args)
