"""The wire protocol: message types, fields, version and framing, in one place.

Every socket of roxi-mp carries msgpack maps; vectors travel as raw little-endian bytes in
a frame of their own, with `dtype` and `shape` beside them in the map (pyzmq's
serialsocket habit: a small header plus a raw buffer sent with copy=False).

Request/reply sockets (query server, supervisor control) are ROUTERs. A client is a REQ or a
DEALER socket; the server replies with the same envelope it received:

    client -> server:  [ b"" ] [ request map ] [ vector bytes ]?      (REQ adds the b"" itself)
    server -> client:  [ b"" ] [ reply map ]   [ vector bytes ]?

    request map: {"v": 1, "id": <any>, "op": "<name>", ...op fields}
    ok reply:    {"v": 1, "id": <same>, "ok": true, ...result fields}
    error reply: {"v": 1, "id": <same or nil>, "ok": false, "code": "<code>", "message": "..."}

Pipeline sockets, inside the system only:

    embedder PUSH -> indexer PULL    [ {"v", "type": "vectors", "chunk_ids", "dtype", "shape",
                                         "model_id", "sender"} ] [ float16 bytes ]
    indexer PUB -> query-server SUB  [ b"gen" ] [ {"v", "generation", "rows"} ]
    child PUSH -> supervisor PULL    [ {"v", "type": "heartbeat", "role", "name", "pid", "seq",
                                         "state", ...} ]
    supervisor PUB -> child SUB      [ b"<target>\0" ] [ {"v", "op": "sleep" | "wake" | "work" | "queries"} ]
                                     target: "all", a role kind ("embedder") or a name ("embedder-2")

A malformed or oversized request gets an error reply, never a crash; a message that cannot
even be answered (no envelope) is dropped and counted by the server.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import msgpack
import numpy as np
import zmq

from .errors import BadInput, RoxiError

VERSION = 1

#: events topic published by the indexer after each commit
TOPIC_GENERATION = b"gen"

# Error codes in replies (the "code" field).
E_BAD_REQUEST = "bad_request"
E_BAD_VERSION = "bad_version"
E_UNKNOWN_OP = "unknown_op"
E_TOO_LARGE = "too_large"
E_NOT_READY = "not_ready"
E_MODEL_MISMATCH = "model_mismatch"
E_INTERNAL = "internal"

#: dtypes a vector frame may carry (little-endian on the wire)
VECTOR_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


class ProtocolError(BadInput):
    """A message that breaks the protocol; `code` goes into the error reply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def command_topic(target: str) -> bytes:
    """PUB/SUB topic of a supervisor command; the NUL stops "embedder" matching "embedder-1"."""
    return target.encode() + b"\0"


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack_map(data: bytes, *, max_bytes: int) -> dict:
    """Decode one msgpack map, refusing anything else with a ProtocolError."""
    if len(data) > max_bytes:
        raise ProtocolError(E_TOO_LARGE, f"message of {len(data)} bytes exceeds {max_bytes}")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise ProtocolError(E_BAD_REQUEST, f"invalid msgpack: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(E_BAD_REQUEST, f"expected a msgpack map, got {type(obj).__name__}")
    return obj


def check_version(msg: dict) -> None:
    v = msg.get("v")
    if type(v) is not int or v != VERSION:  # True == 1 and 1.0 == 1 in Python; not on the wire
        raise ProtocolError(E_BAD_VERSION, f"protocol version {v!r} not supported (server speaks {VERSION})")


def request(op: str, request_id: Any, **fields: Any) -> dict:
    return {"v": VERSION, "id": request_id, "op": op, **fields}


def ok(request_id: Any, **fields: Any) -> dict:
    return {"v": VERSION, "id": request_id, "ok": True, **fields}


def error(request_id: Any, code: str, message: str) -> dict:
    return {"v": VERSION, "id": request_id, "ok": False, "code": code, "message": message}


def split_envelope(frames: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Split ROUTER frames into (envelope up to and including the empty delimiter, body).

    A DEALER that sends no delimiter still gets an answer: its envelope is the identity alone.
    """
    for i in range(1, len(frames)):
        if len(frames[i]) == 0:
            return list(frames[: i + 1]), list(frames[i + 1:])
    return list(frames[:1]), list(frames[1:])


def answer(frames: Sequence[bytes], handle: Callable[[dict, list[bytes]], dict], *,
           max_bytes: int, on_internal: Callable[[BaseException], None] | None = None
           ) -> tuple[list[bytes], bool] | None:
    """Turn one ROUTER request into (reply frames, ok); None when it cannot be answered.

    `handle(request, extra_frames)` returns the ok fields or raises: a RoxiError becomes an
    error reply with its code, anything else an `internal` reply (reported to on_internal).
    """
    envelope, body = split_envelope(frames)
    if not body:
        return None  # no request frame at all: nothing to answer
    request_id = None
    try:
        msg = unpack_map(body[0], max_bytes=max_bytes)
        request_id = msg.get("id")
        check_version(msg)
        reply = ok(request_id, **handle(msg, body[1:]))
    except RoxiError as exc:
        code = exc.code if isinstance(exc.code, str) else E_BAD_REQUEST
        reply = error(request_id, code, str(exc))
    except Exception as exc:
        if on_internal is not None:
            on_internal(exc)
        reply = error(request_id, E_INTERNAL, f"internal error: {exc}")
    return envelope + [pack(reply)], reply["ok"]


def encode_array(matrix: np.ndarray) -> tuple[dict, memoryview]:
    """Header fields and a raw little-endian buffer for a float16/float32 array."""
    name = {np.dtype("float16"): "float16", np.dtype("float32"): "float32"}.get(matrix.dtype)
    if name is None:
        raise BadInput(f"arrays travel as float16 or float32, not {matrix.dtype}")
    arr = np.ascontiguousarray(matrix, dtype=VECTOR_DTYPES[name])
    return {"dtype": name, "shape": list(arr.shape)}, memoryview(arr).cast("B")


def decode_array(meta: dict, buffer: bytes | memoryview, *, dim: int | None = None,
                 max_rows: int = 1_000_000) -> np.ndarray:
    """Rebuild an array from its header fields and raw bytes, validating everything."""
    name = meta.get("dtype")
    dtype = VECTOR_DTYPES.get(name) if isinstance(name, str) else None
    if dtype is None:
        raise ProtocolError(E_BAD_REQUEST, f"dtype must be one of {sorted(VECTOR_DTYPES)}")
    shape = meta.get("shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
        raise ProtocolError(E_BAD_REQUEST, "shape must be [d] or [n, d] of non-negative integers")
    if len(shape) == 1:
        shape = [1, shape[0]]
    if shape[0] > max_rows:
        raise ProtocolError(E_TOO_LARGE, f"{shape[0]} rows exceed the limit of {max_rows}")
    if dim is not None and shape[1] != dim:
        raise ProtocolError(E_BAD_REQUEST, f"vector dimension {shape[1]} does not match the store's {dim}")
    expected = shape[0] * shape[1] * dtype.itemsize
    if len(buffer) != expected:
        raise ProtocolError(E_BAD_REQUEST, f"vector frame has {len(buffer)} bytes, shape {shape} "
                                           f"of {meta['dtype']} needs {expected}")
    arr = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    if not np.isfinite(arr).all():
        raise ProtocolError(E_BAD_REQUEST, "vector contains NaN or infinity")
    return arr


def configure(sock: zmq.Socket, *, hwm: int, max_message_bytes: int | None = None) -> zmq.Socket:
    """Apply the settings every roxi socket needs: bounded queues, no linger, size cap."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    if max_message_bytes is not None:
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    return sock
