"""The wire protocol: message types, fields, version and framing, in one place.

Every socket of roxi-mp carries msgpack maps; vectors travel as raw little-endian bytes in
a frame of their own, with `dtype` and `shape` beside them in the map (pyzmq's
serialsocket habit: a small header plus a raw buffer sent with copy=False). Every message
is built and parsed here (function names on the right): a builder returns what goes on
the socket, a parser takes what came off it and raises ProtocolError, with an error code,
for anything that breaks the protocol.

Request/reply sockets (query server, documents endpoint, supervisor control, query model
process) are ROUTERs.
A client is a REQ or a DEALER socket; the server replies with the envelope it received:

    client -> server:  [ b"" ] [ request map ] [ vector bytes ]?      (REQ adds the b"" itself)
    server -> client:  [ b"" ] [ reply map ]   [ vector bytes ]?                   answer()

    request map: {"v": 1, "id": <any>, "op": "<name>", ...op fields}               request()
    ok reply:    {"v": 1, "id": <same>, "ok": true, ...result fields}              ok()
    error reply: {"v": 1, "id": <same or nil>, "ok": false, "code": "<code>", "message": "..."}
                                                                                   error()
Ops of the query server (roxi_mp.roles.query_server, QueryServer.OPS):
    query  {"text", "k"?, "with_text"?, "mode"?, "fusion"?, "weights"?}, or {"dtype",
           "shape": [1, d], "text"?, ...the same} plus one float32/float16 vector frame
           -> {"hits", "mode", "coverage", "generation", "rows", "took_ms"}
           mode: "hybrid" | "dense" | "lexical" (default query.mode; lexical needs text);
           fusion: "weighted" | "rrf" (default query.fusion); weights: {"dense"?, "lexical"?}
           each in [0, 1], not both 0; anything else is a bad_request (roxi_mp.hybrid).
           A vector's text feeds only the lexical leg. coverage: {"indexed", "chunks",
           "percent", "pending", "failed"} in every reply, cached or not; generation: the
           store's, one more per indexer commit or compaction.
           each hit: {"rank", "score", "row", "chunk_id", "doc_id", "key", "version",
           "position", "title", "source", "page", "heading", "dense_rank", "lexical_rank",
           "embedded", "text" (unless with_text is false)}: `dense_rank` / `lexical_rank`
           (from 1, nil if that leg missed it) say which legs found it, `row` is nil and
           `embedded` false for a chunk found by its words before it has a vector; `score`
           is fused (hybrid), an inner product (dense) or bm25, larger better (lexical);
           `page` (1-based, PDF) and `heading` ("Methods > Dosing": HTML, Word,
           Markdown) say where the chunk's first word is in its document, nil if unknown; `key` and
           `version` name the document version the chunk belongs to, always a live one (a
           delete or a replacement's promotion is seen by the next query, cached answers
           included); `rank` counts from 1, best first; `row` is the vector's row in the
           current vectors file (renumbered by a compaction: not a stable id)
           (with a remote embedding service a text query's reply may come after later
           requests' replies, within query.embed_timeout_seconds: match replies by id)
    stats  -> the server's counters        ping  -> {"pong": true}
    sleep  -> stats, after a deep sleep    wake  -> stats, after mapping the vectors
Ops of the documents endpoint (roxi_mp.roles.documents, DocumentsRole.OPS; one frame, the
map; its own size limit, documents.max_document_bytes plus room for the other fields):
    put    {"key", "content" (str, or bytes), "content_type"?, "title"?, "metadata"?}
           -> {"outcome": "added" | "replaced" | "unchanged", "key", "version", "chunks",
               "reused", "superseded"}          (roxi_mp.documents checks every field)
           content_type: text/plain (a str's default), text/markdown, application/pdf,
           text/html, or the DOCX type; bytes without one are sniffed (PDF, DOCX, HTML,
           else UTF-8 text), bytes that contradict it are a bad_request. A PDF, HTML or
           DOCX put is answered once its text is extracted (in a child process, after
           the puts queued before it: busy when documents.max_pending_extractions wait);
           a document that cannot be read is a bad_request with the one-line reason
    delete {"key"} -> {"deleted": versions}, or not_found
    get    {"key"} -> {"key", "live"?, "pending"?}, or not_found
    list   {"state"?, "after"?, "limit"?} -> {"documents", "next"}
    stats  -> the role's counters        ping  -> {"pong": true}
Ops of the supervisor's control socket (supervisor/commands/*.py, one module each):
    notify {"event": "work" | "pause" | "resume"}   ping   status   restart {"role"}
    stop {"role"?}   sleep {"role"?}   wake {"role"?}
    compact -> {"started", "running", "message"} (never a second one while one runs; not
           enough disk for the new vectors file: error code busy with the reason)
The query model process (roxi_mp.model_process) is not spoken to over ZeroMQ: a socket pair,
each message a 4-byte length and a msgpack map; ping -> {"ok", "pong"}, encode {"texts"} ->
{"ok", "rows"} followed by rows x dim little-endian float32.

Pipeline sockets, inside the system only:

    embedder PUSH -> indexer PULL    [ {"v", "type": "vectors", "chunk_ids", "model_id", "sender",
                                         "dtype": "float16", "shape"} ] [ float16 bytes ]
                                                              vectors_message(), parse_vectors_message()
    indexer PUB -> query-server SUB  [ b"gen" ] [ {"v", "generation", "rows", "ann_rows"} ]
                                                              generation_event(), parse_generation_event()
    child PUSH -> supervisor PULL    [ {"v", "type": "heartbeat", "role", "name", "pid", "seq",
                                         "state", ...role counters} ]   heartbeat(), parse_heartbeat()
        (a growing "served" of the query server makes the supervisor publish `queries`, a
        growing "work" of the documents role publishes `work` to embedders and indexer)
    supervisor PUB -> child SUB      [ b"<target>\\0" ] [ {"v", "op"} ]  role_command(), parse_role_command()
        target: "all", a role kind ("embedder") or a name ("embedder-2")
        op (ROLE_OPS): sleep, wake (to any role); work, pause, resume (notify: `roxi ingest`,
        a put on the documents endpoint, `pause`, `resume`); queries (query traffic flows:
        embedders yield for a while); compact (to the indexer: `roxi compact`, start a
        compaction now)

Error codes (the "code" of an error reply; one table, in roxi_mp.errors, re-exported here):
    bad_request, bad_version, unknown_op, too_large (the request), model_mismatch, config,
    store, embed_failed (the server's state or model), embed_timeout (the embedding service
    did not answer a query text in time), upstream_unavailable (the embedding service is
    down, failing or busy: try again later), not_found (no document with that key), busy
    (the operation already runs, e.g. a compaction), internal (a bug), error (other);
    and the codes of client-side errors, which no server sends: not_running, already_running,
    timeout, target_unreachable.

A malformed or oversized request gets an error reply, never a crash; a message that cannot
even be answered (no envelope) is dropped and counted by the server. A pipeline message
that does not parse is dropped by its receiver (the indexer counts and logs a vectors one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import msgpack
import zmq

from .errors import (  # the codes are defined in errors (one table) and re-exported here
    E_BAD_REQUEST,
    E_BAD_VERSION,
    E_INTERNAL,
    E_MODEL_MISMATCH,
    E_TOO_LARGE,
    E_UNKNOWN_OP,
    BadInput,
    RoxiError,
)

if TYPE_CHECKING:  # numpy is imported by the array codec when it runs: the supervisor and
    import numpy as np  # the documents role never need it (deep sleep floors, issue 22)

VERSION = 1

#: events topic published by the indexer after each commit
TOPIC_GENERATION = b"gen"

#: largest heartbeat, bytes
HEARTBEAT_BYTES = 64 * 1024
#: largest supervisor -> role command, bytes
COMMAND_BYTES = 64 * 1024
#: largest generation event, bytes
EVENT_BYTES = 4096
#: largest vectors header (the chunk ids of one batch), bytes
VECTORS_HEADER_BYTES = 1 << 20

#: ops the supervisor publishes to roles; a role ignores those it has no use for
ROLE_OPS = ("sleep", "wake", "work", "pause", "resume", "queries", "compact")

#: dtypes a vector frame may carry: name -> numpy's little-endian type (as on the wire)
VECTOR_DTYPES = {"float32": "<f4", "float16": "<f2"}


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
    import numpy as np
    name = matrix.dtype.name  # of either byte order: the little-endian copy below is what travels
    if matrix.dtype.kind != "f" or name not in VECTOR_DTYPES:
        raise BadInput(f"arrays travel as float16 or float32, not {matrix.dtype}")
    arr = np.ascontiguousarray(matrix, dtype=VECTOR_DTYPES[name])
    return {"dtype": name, "shape": list(arr.shape)}, memoryview(arr).cast("B")


def decode_array(meta: dict, buffer: bytes | memoryview, *, dim: int | None = None,
                 max_rows: int = 1_000_000) -> np.ndarray:
    """Rebuild an array from its header fields and raw bytes, validating everything."""
    import numpy as np
    name = meta.get("dtype")
    dtype = np.dtype(VECTOR_DTYPES[name]) if isinstance(name, str) and name in VECTOR_DTYPES else None
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


# --- pipeline messages (inside the system) ------------------------------------------------
def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int in Python, not on the wire


def _require(ok: bool, message: str, code: str = E_BAD_REQUEST) -> None:
    if not ok:
        raise ProtocolError(code, message)


def heartbeat(role: str, name: str, pid: int, seq: int, /, **info: Any) -> bytes:
    """A role's heartbeat; `info` is its state and counters (Role.info())."""
    return pack({"v": VERSION, "type": "heartbeat", "role": role, "name": name, "pid": pid, "seq": seq,
                 **info})


def parse_heartbeat(data: bytes, *, max_bytes: int = HEARTBEAT_BYTES) -> dict:
    """The heartbeat map, its identity fields checked; the rest is the role's own."""
    msg = unpack_map(data, max_bytes=max_bytes)
    check_version(msg)
    _require(msg.get("type") == "heartbeat", f"not a heartbeat: type {msg.get('type')!r}")
    _require(isinstance(msg.get("role"), str) and isinstance(msg.get("name"), str),
             "a heartbeat needs a role and a name")
    _require(_is_int(msg.get("pid")) and _is_int(msg.get("seq")), "a heartbeat needs an integer pid and seq")
    return msg


def role_command(target: str, op: str) -> list[bytes]:
    """A supervisor command to roles: `target` is "all", a role kind or a child's name."""
    if op not in ROLE_OPS:
        raise ValueError(f"no role command {op!r} (known: {', '.join(ROLE_OPS)})")
    return [command_topic(target), pack({"v": VERSION, "op": op})]


def parse_role_command(frames: Sequence[bytes], *, max_bytes: int = COMMAND_BYTES) -> dict:
    """The command map ({"v", "op"}) of a role_command() message."""
    _require(len(frames) == 2, f"a role command has {len(frames)} frames, expected 2")
    msg = unpack_map(frames[1], max_bytes=max_bytes)
    check_version(msg)
    _require(msg.get("op") in ROLE_OPS, f"no role command {msg.get('op')!r}", E_UNKNOWN_OP)
    return msg


class GenerationEvent(NamedTuple):
    generation: int
    rows: int  #: committed rows of the vectors file
    ann_rows: int  #: rows the approximate index covers


def generation_event(generation: int, rows: int, ann_rows: int) -> list[bytes]:
    """The indexer's news after a commit or an index build."""
    msg = {"v": VERSION, "generation": generation, "rows": rows, "ann_rows": ann_rows}
    return [TOPIC_GENERATION, pack(msg)]


def parse_generation_event(frames: Sequence[bytes], *, max_bytes: int = EVENT_BYTES) -> GenerationEvent:
    _require(len(frames) == 2 and frames[0] == TOPIC_GENERATION, "not a generation event")
    msg = unpack_map(frames[1], max_bytes=max_bytes)
    check_version(msg)
    event = GenerationEvent(msg.get("generation"), msg.get("rows"), msg.get("ann_rows"))
    _require(all(_is_int(n) and n >= 0 for n in event),
             "generation, rows and ann_rows must be non-negative integers")
    return event


def vectors_message(chunk_ids: Sequence[int], matrix: np.ndarray, *, model_id: str,
                    sender: str) -> list[bytes | memoryview]:
    """An embedded batch for the indexer: row i of `matrix` (sent as float16) is chunk_ids[i]."""
    import numpy as np
    meta, buf = encode_array(np.asarray(matrix, dtype=np.float16))
    header = {"v": VERSION, "type": "vectors", "chunk_ids": list(chunk_ids), "model_id": model_id,
              "sender": sender, **meta}
    return [pack(header), buf]


def parse_vectors_message(frames: Sequence[bytes | memoryview], *, model_id: str,
                          dim: int) -> tuple[list[int], np.ndarray]:
    """(chunk ids, float16 matrix of shape (len(ids), dim)) from a vectors_message()."""
    _require(len(frames) == 2, f"vectors message has {len(frames)} frames, expected 2")
    header = unpack_map(bytes(frames[0]), max_bytes=VECTORS_HEADER_BYTES)
    check_version(header)
    _require(header.get("type") == "vectors", f"not a vectors message: type {header.get('type')!r}")
    _require(header.get("model_id") == model_id,
             f"vectors from model {header.get('model_id')!r}, store uses {model_id!r}", E_MODEL_MISMATCH)
    matrix = decode_array(header, frames[1], dim=dim)
    ids = header.get("chunk_ids")
    _require(isinstance(ids, list) and len(ids) == matrix.shape[0]
             and all(_is_int(i) and 0 < i < 2**63 for i in ids),
             "chunk_ids must be a list of positive 64-bit integers, one per row")
    return ids, matrix.astype("<f2", copy=False)


def configure(sock: zmq.Socket, *, hwm: int, max_message_bytes: int | None = None) -> zmq.Socket:
    """Apply the settings every roxi socket needs: bounded queues, no linger, size cap."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    if max_message_bytes is not None:
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    return sock
