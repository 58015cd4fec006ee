"""Unit tests of roxi_mp.protocol: msgpack maps, version, envelopes, vector frames, the
pipeline messages (heartbeat, role command, generation event, vectors) and the error codes."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest

from roxi_mp import errors, protocol
from roxi_mp.embedders.base import EmbedError
from roxi_mp.errors import BAD_INPUT, BadInput, RoxiError
from roxi_mp.protocol import (
    E_BAD_REQUEST,
    E_BAD_VERSION,
    E_MODEL_MISMATCH,
    E_TOO_LARGE,
    E_UNKNOWN_OP,
    ProtocolError,
    check_version,
    decode_array,
    encode_array,
    pack,
    split_envelope,
    unpack_map,
)

MAX = 4096


def refused(code: str, fn, *args, **kwargs) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, str(info.value)
    assert info.value.exit_code == BAD_INPUT
    return info.value


# --- maps ------------------------------------------------------------------------------
def test_pack_unpack_round_trip() -> None:
    msg = protocol.request("query", "id-1", text="gout ✓", k=5, with_text=False, raw=b"\x00\x01",
                           nested={"a": [1, 2.5, None]})
    data = pack(msg)
    assert isinstance(data, bytes)
    assert unpack_map(data, max_bytes=MAX) == msg
    assert msg["v"] == protocol.VERSION and msg["op"] == "query" and msg["id"] == "id-1"


def test_ok_and_error_reply_shapes() -> None:
    assert protocol.ok(7, hits=[]) == {"v": 1, "id": 7, "ok": True, "hits": []}
    assert protocol.error(None, "bad_request", "no") == {"v": 1, "id": None, "ok": False,
                                                         "code": "bad_request", "message": "no"}


@pytest.mark.parametrize("value", [[1, 2], "text", 3, None, b"bytes"])
def test_unpack_map_refuses_non_maps(value) -> None:
    err = refused(E_BAD_REQUEST, unpack_map, pack(value), max_bytes=MAX)
    assert "map" in str(err)


@pytest.mark.parametrize("data", [b"\xc1", b"\x92\x01", b"", b"\x81\x01\x02", pack({"a": 1}) + b"\x00"])
def test_unpack_map_refuses_invalid_msgpack(data: bytes) -> None:
    # reserved byte, truncated array, nothing, int map key (strict_map_key), trailing data
    err = refused(E_BAD_REQUEST, unpack_map, data, max_bytes=MAX)
    assert "invalid msgpack" in str(err)


def test_unpack_map_refuses_oversized_before_decoding() -> None:
    data = pack({"text": "x" * 5000})
    err = refused(E_TOO_LARGE, unpack_map, data, max_bytes=MAX)
    assert str(len(data)) in str(err)
    assert unpack_map(data, max_bytes=len(data)) == {"text": "x" * 5000}  # exactly at the limit


def test_check_version() -> None:
    check_version({"v": protocol.VERSION})
    for bad in ({"v": 2}, {"v": 0}, {}, {"v": "1"}, {"v": None}):
        err = refused(E_BAD_VERSION, check_version, bad)
        assert "version" in str(err)


# --- envelopes -------------------------------------------------------------------------
def test_split_envelope_req_style() -> None:
    assert split_envelope([b"client", b"", b"body", b"vec"]) == ([b"client", b""], [b"body", b"vec"])


def test_split_envelope_dealer_without_delimiter() -> None:
    assert split_envelope([b"client", b"body"]) == ([b"client"], [b"body"])
    assert split_envelope([b"client"]) == ([b"client"], [])


def test_split_envelope_multi_hop_and_empty_body() -> None:
    assert split_envelope([b"a", b"b", b"", b"body"]) == ([b"a", b"b", b""], [b"body"])
    assert split_envelope([b"client", b""]) == ([b"client", b""], [])


# --- vector frames -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_encode_decode_round_trip(dtype) -> None:
    m = np.random.default_rng(1).standard_normal((3, 16)).astype(dtype)
    meta, buf = encode_array(m)
    assert meta == {"dtype": np.dtype(dtype).name, "shape": [3, 16]}
    assert len(buf) == m.nbytes
    # The header travels through msgpack, the buffer as raw bytes.
    back = decode_array(unpack_map(pack(meta), max_bytes=MAX), bytes(buf), dim=16)
    assert back.dtype == np.dtype(dtype) and back.shape == (3, 16)
    np.testing.assert_array_equal(back, m)


def test_non_contiguous_array_is_encoded_row_major() -> None:
    m = np.arange(32, dtype=np.float32).reshape(4, 8)[:, ::2]
    meta, buf = encode_array(m)
    np.testing.assert_array_equal(decode_array(meta, bytes(buf)), m)


def test_one_dimensional_shape_is_promoted_to_one_row() -> None:
    v = np.linspace(-1, 1, 8, dtype=np.float32)
    meta, buf = encode_array(v)
    assert meta["shape"] == [8]
    back = decode_array(meta, bytes(buf), dim=8)
    assert back.shape == (1, 8)
    np.testing.assert_array_equal(back[0], v)


@pytest.mark.parametrize("dtype", [">f4", ">f2"])
def test_a_big_endian_array_travels_little_endian(dtype) -> None:
    m = np.linspace(-2, 2, 16).reshape(2, 8).astype(dtype)
    meta, buf = encode_array(m)
    assert meta == {"dtype": np.dtype(dtype).name, "shape": [2, 8]}
    np.testing.assert_array_equal(decode_array(meta, bytes(buf), dim=8), m)


def test_encode_refuses_other_dtypes() -> None:
    with pytest.raises(BadInput):
        encode_array(np.zeros((2, 8), dtype=np.float64))
    with pytest.raises(BadInput):
        encode_array(np.zeros((2, 8), dtype=np.int32))


def good(rows: int = 2, dim: int = 8) -> tuple[dict, bytes]:
    meta, buf = encode_array(np.ones((rows, dim), dtype=np.float32))
    return meta, bytes(buf)


def test_decode_refuses_wrong_byte_length() -> None:
    meta, buf = good()
    for wrong in (buf[:-1], buf + b"\x00", b""):
        err = refused(E_BAD_REQUEST, decode_array, meta, wrong, dim=8)
        assert "bytes" in str(err)


def test_decode_refuses_wrong_dim() -> None:
    meta, buf = good(dim=8)
    err = refused(E_BAD_REQUEST, decode_array, meta, buf, dim=16)
    assert "8" in str(err) and "16" in str(err)


@pytest.mark.parametrize("dtype", ["float64", "int8", "FLOAT32", None, 5, b"float32"])
def test_decode_refuses_bad_dtype(dtype) -> None:
    meta, buf = good()
    err = refused(E_BAD_REQUEST, decode_array, {**meta, "dtype": dtype}, buf)
    assert "dtype" in str(err)


@pytest.mark.parametrize("dtype", [["float32"], {"name": "float32"}])
def test_decode_refuses_unhashable_dtype(dtype) -> None:
    meta, buf = good()
    refused(E_BAD_REQUEST, decode_array, {**meta, "dtype": dtype}, buf)


@pytest.mark.parametrize("shape", [
    None, "2,8", [], [1, 2, 8], [True, 8], [2, True], [-2, 8], [2, -8], ["2", "8"], [2.0, 8], (2, 8),
])
def test_decode_refuses_bad_shapes(shape) -> None:
    meta, buf = good()
    err = refused(E_BAD_REQUEST, decode_array, {**meta, "shape": shape}, buf)
    assert "shape" in str(err)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_decode_refuses_non_finite(bad: float, dtype) -> None:
    m = np.zeros((2, 8), dtype=dtype)
    m[1, 3] = bad
    meta, buf = encode_array(m)
    err = refused(E_BAD_REQUEST, decode_array, meta, bytes(buf), dim=8)
    assert "NaN" in str(err)


def test_decode_refuses_too_many_rows() -> None:
    meta, buf = good(rows=3)
    err = refused(E_TOO_LARGE, decode_array, meta, buf, max_rows=2)
    assert "3" in str(err)
    assert decode_array(meta, buf, max_rows=3).shape == (3, 8)
    # The row limit is checked before the byte count: a huge claimed shape is refused cheaply.
    refused(E_TOO_LARGE, decode_array, {"dtype": "float32", "shape": [10**12, 8]}, b"", max_rows=10)


def test_decoded_array_is_little_endian_from_the_wire() -> None:
    raw = np.array([[1.5, -2.0, 0.25, 4.0, 8.0, 16.0, 32.0, 64.0]], dtype="<f4").tobytes()
    back = decode_array({"dtype": "float32", "shape": [1, 8]}, raw)
    assert back.tolist() == [[1.5, -2.0, 0.25, 4.0, 8.0, 16.0, 32.0, 64.0]]


def test_msgpack_bin_type_is_used_for_bytes() -> None:
    # use_bin_type: bytes stay bytes, str stays str, across the wire.
    data = pack({"b": b"\x00", "s": "x"})
    assert msgpack.unpackb(data, raw=False) == {"b": b"\x00", "s": "x"}


# --- heartbeat ---------------------------------------------------------------------------
def test_heartbeat_wire_and_round_trip() -> None:
    data = protocol.heartbeat("query", "query", 4242, 7, state="asleep", served=3, rows=10)
    # The same map, field for field and in order, as the roles sent before the builder.
    assert data == pack({"v": 1, "type": "heartbeat", "role": "query", "name": "query", "pid": 4242,
                         "seq": 7, "state": "asleep", "served": 3, "rows": 10})
    assert protocol.parse_heartbeat(data) == {"v": 1, "type": "heartbeat", "role": "query", "name": "query",
                                              "pid": 4242, "seq": 7, "state": "asleep", "served": 3,
                                              "rows": 10}


BEAT = {"v": 1, "type": "heartbeat", "role": "embedder", "name": "embedder-1", "pid": 12, "seq": 3,
        "state": "running"}


@pytest.mark.parametrize("change, code", [
    ({"v": 2}, E_BAD_VERSION),
    ({"type": "vectors"}, E_BAD_REQUEST),
    ({"type": None}, E_BAD_REQUEST),
    ({"name": None}, E_BAD_REQUEST),
    ({"name": 5}, E_BAD_REQUEST),
    ({"role": b"embedder"}, E_BAD_REQUEST),
    ({"pid": "12"}, E_BAD_REQUEST),
    ({"pid": True}, E_BAD_REQUEST),
    ({"seq": 3.0}, E_BAD_REQUEST),
    ({"seq": None}, E_BAD_REQUEST),
])
def test_parse_heartbeat_refuses(change: dict, code: str) -> None:
    assert protocol.parse_heartbeat(pack(BEAT)) == BEAT
    refused(code, protocol.parse_heartbeat, pack({**BEAT, **change}))


def test_parse_heartbeat_refuses_non_maps_and_oversized() -> None:
    refused(E_BAD_REQUEST, protocol.parse_heartbeat, pack([1, 2]))
    refused(E_BAD_REQUEST, protocol.parse_heartbeat, b"\xc1")
    big = protocol.heartbeat("query", "query", 1, 1, pad="x" * protocol.HEARTBEAT_BYTES)
    refused(E_TOO_LARGE, protocol.parse_heartbeat, big)


# --- role commands -------------------------------------------------------------------------
def test_role_command_wire() -> None:
    assert protocol.role_command("embedder", "work") == [b"embedder\0", pack({"v": 1, "op": "work"})]
    assert protocol.role_command("embedder-2", "sleep")[0] == b"embedder-2\0"


@pytest.mark.parametrize("op", protocol.ROLE_OPS)
def test_role_command_round_trip(op: str) -> None:
    assert protocol.parse_role_command(protocol.role_command("all", op)) == {"v": 1, "op": op}


def test_role_ops_are_the_ones_the_supervisor_sends() -> None:
    from supervisor.commands import notify

    assert set(protocol.ROLE_OPS) == {"sleep", "wake", "queries", "compact", *notify.EVENTS}


def test_role_command_builder_refuses_an_unknown_op() -> None:
    with pytest.raises(ValueError, match="stop"):
        protocol.role_command("all", "stop")


@pytest.mark.parametrize("frames, code", [
    ([pack({"v": 1, "op": "wake"})], E_BAD_REQUEST),  # no topic
    ([b"all\0", pack({"v": 1, "op": "wake"}), b"extra"], E_BAD_REQUEST),
    ([b"all\0", b"\xc1"], E_BAD_REQUEST),
    ([b"all\0", pack(["wake"])], E_BAD_REQUEST),
    ([b"all\0", pack({"v": 2, "op": "wake"})], E_BAD_VERSION),
    ([b"all\0", pack({"op": "wake"})], E_BAD_VERSION),
    ([b"all\0", pack({"v": 1, "op": "delete"})], E_UNKNOWN_OP),
    ([b"all\0", pack({"v": 1})], E_UNKNOWN_OP),
    ([b"all\0", pack({"v": 1, "op": ["wake"]})], E_UNKNOWN_OP),
    ([b"all\0", pack({"v": 1, "op": "wake", "pad": "x" * 100})], E_TOO_LARGE),
])
def test_parse_role_command_refuses(frames: list[bytes], code: str) -> None:
    refused(code, protocol.parse_role_command, frames, max_bytes=64)


# --- generation events -----------------------------------------------------------------------
def test_generation_event_wire_and_round_trip() -> None:
    frames = protocol.generation_event(5, 1200, 1000)
    assert frames == [b"gen", pack({"v": 1, "generation": 5, "rows": 1200, "ann_rows": 1000})]
    event = protocol.parse_generation_event(frames)
    assert event == (5, 1200, 1000) and (event.generation, event.rows, event.ann_rows) == (5, 1200, 1000)
    assert protocol.parse_generation_event(protocol.generation_event(0, 0, 0)).rows == 0


EVENT = {"v": 1, "generation": 5, "rows": 1200, "ann_rows": 1000}


@pytest.mark.parametrize("frames, code", [
    ([pack(EVENT)], E_BAD_REQUEST),
    ([b"gen", pack(EVENT), b"extra"], E_BAD_REQUEST),
    ([b"generation", pack(EVENT)], E_BAD_REQUEST),  # the SUB prefix filter lets it through
    ([b"gen", b"\xc1"], E_BAD_REQUEST),
    ([b"gen", pack({**EVENT, "v": 0})], E_BAD_VERSION),
    ([b"gen", pack({**EVENT, "rows": -1})], E_BAD_REQUEST),
    ([b"gen", pack({**EVENT, "rows": True})], E_BAD_REQUEST),
    ([b"gen", pack({**EVENT, "rows": 1.5})], E_BAD_REQUEST),
    ([b"gen", pack({k: v for k, v in EVENT.items() if k != "generation"})], E_BAD_REQUEST),
    ([b"gen", pack({**EVENT, "ann_rows": "1000"})], E_BAD_REQUEST),
    ([b"gen", pack({**EVENT, "pad": "x" * protocol.EVENT_BYTES})], E_TOO_LARGE),
])
def test_parse_generation_event_refuses(frames: list[bytes], code: str) -> None:
    refused(code, protocol.parse_generation_event, frames)


# --- vectors (embedder -> indexer) -------------------------------------------------------------
MODEL = "hashing-v1-8"


def vectors(ids: list, matrix: np.ndarray, **header) -> list[bytes]:
    """A vectors message with some header fields replaced: the way a broken sender makes one."""
    head, buf = protocol.vectors_message(ids, matrix, model_id=MODEL, sender="embedder-1:1:ab")
    return [pack({**unpack_map(head, max_bytes=1 << 20), **header}), bytes(buf)]


def test_vectors_message_wire_and_round_trip() -> None:
    m = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    head, buf = protocol.vectors_message([7, 3, 9], m, model_id=MODEL, sender="embedder-1:1:ab")
    assert unpack_map(head, max_bytes=1 << 20) == {
        "v": 1, "type": "vectors", "chunk_ids": [7, 3, 9], "model_id": MODEL, "sender": "embedder-1:1:ab",
        "dtype": "float16", "shape": [3, 8]}
    assert list(unpack_map(head, max_bytes=1 << 20)) == ["v", "type", "chunk_ids", "model_id", "sender",
                                                         "dtype", "shape"]
    ids, back = protocol.parse_vectors_message([head, buf], model_id=MODEL, dim=8)
    assert ids == [7, 3, 9] and back.dtype == np.float16 and back.shape == (3, 8)
    np.testing.assert_array_equal(back, m.astype(np.float16))  # float32 in, float16 on the wire
    ids, _ = protocol.parse_vectors_message([head, bytes(buf)], model_id=MODEL, dim=8)
    assert ids == [7, 3, 9]
    biggest = protocol.parse_vectors_message(vectors([2**63 - 1], m[:1]), model_id=MODEL, dim=8)[0]
    assert biggest == [2**63 - 1]


def _bad_vectors() -> dict[str, tuple[list[bytes], str]]:
    m = np.ones((2, 8), dtype=np.float16)
    nan = m.copy()
    nan[0, 0] = np.nan
    good = vectors([1, 2], m)
    return {
        "one frame": (good[:1], E_BAD_REQUEST),
        "three frames": (good + [b"extra"], E_BAD_REQUEST),
        "garbage header": ([b"\xc1\xc1", good[1]], E_BAD_REQUEST),
        "header not a map": ([pack([1, 2]), good[1]], E_BAD_REQUEST),
        "bad version": (vectors([1, 2], m, v=99), E_BAD_VERSION),
        "not vectors": (vectors([1, 2], m, type="heartbeat"), E_BAD_REQUEST),
        "wrong model": (vectors([1, 2], m, model_id="hashing-v1-512"), E_MODEL_MISMATCH),
        "no model": (vectors([1, 2], m, model_id=None), E_MODEL_MISMATCH),
        "wrong dim": (vectors([1, 2], np.ones((2, 16), np.float16)), E_BAD_REQUEST),
        "short buffer": ([good[0], good[1][:-2]], E_BAD_REQUEST),
        "nan": (vectors([1, 2], nan), E_BAD_REQUEST),
        "unhashable dtype": (vectors([1, 2], m, dtype=["float16"]), E_BAD_REQUEST),
        "ids shorter than rows": (vectors([1], m), E_BAD_REQUEST),
        "ids longer than rows": (vectors([1, 2, 3], m), E_BAD_REQUEST),
        "ids not a list": (vectors([1, 2], m, chunk_ids=1), E_BAD_REQUEST),
        "no ids": (vectors([1, 2], m, chunk_ids=None), E_BAD_REQUEST),
        "bool id": (vectors([True, 2], m), E_BAD_REQUEST),
        "string id": (vectors(["1", 2], m), E_BAD_REQUEST),
        "zero id": (vectors([0, 2], m), E_BAD_REQUEST),
        "negative id": (vectors([-1, 2], m), E_BAD_REQUEST),
        "id beyond int64": (vectors([2**63, 2], m), E_BAD_REQUEST),
    }


@pytest.mark.parametrize("case", list(_bad_vectors()))
def test_parse_vectors_message_refuses(case: str) -> None:
    frames, code = _bad_vectors()[case]
    refused(code, protocol.parse_vectors_message, frames, model_id=MODEL, dim=8)


def test_parse_vectors_message_refuses_an_oversized_header() -> None:
    m = np.ones((1, 8), dtype=np.float16)
    frames = vectors([1], m, pad=b"x" * protocol.VECTORS_HEADER_BYTES)
    refused(E_TOO_LARGE, protocol.parse_vectors_message, frames, model_id=MODEL, dim=8)


# --- error codes and the frame diagram ------------------------------------------------------------
def test_error_codes_are_one_table() -> None:
    # The wire values, spelled out once here: renaming one is a protocol change.
    assert set(errors.CODES) == {"error", "bad_request", "bad_version", "unknown_op", "too_large", "internal",
                                 "config", "store", "model_mismatch", "not_running", "already_running",
                                 "timeout", "target_unreachable", "embed_failed", "embed_timeout",
                                 "upstream_unavailable", "not_found", "busy"}
    assert len(errors.CODES) == len(set(errors.CODES))
    for name in ("E_BAD_REQUEST", "E_BAD_VERSION", "E_UNKNOWN_OP", "E_TOO_LARGE", "E_INTERNAL",
                 "E_MODEL_MISMATCH"):
        assert getattr(protocol, name) is getattr(errors, name)  # re-exported, not redefined
    assert not hasattr(protocol, "E_NOT_READY")  # never sent by anyone: removed


def _error_classes(cls: type) -> list[type]:
    return [cls] + [c for sub in cls.__subclasses__() for c in _error_classes(sub)]


def test_every_error_class_carries_a_code_of_the_table() -> None:
    import roxi_mp.backup  # noqa: F401  (BackupError)
    from supervisor.commands import UnknownCommand

    classes = _error_classes(RoxiError)
    assert {UnknownCommand, EmbedError, ProtocolError, errors.ServerError} <= set(classes)
    for cls in classes:
        if cls not in (ProtocolError, errors.ServerError):  # these two carry the code they are given
            assert cls.code in errors.CODES, cls
    assert UnknownCommand.code == E_UNKNOWN_OP and errors.ModelMismatch.code == E_MODEL_MISMATCH
    assert (errors.EmbedTimeout.code, errors.UpstreamUnavailable.code) == ("embed_timeout", "upstream_unavailable")
    # A client's `roxi query` exits TIMEOUT when the server's own embedding deadline passed.
    assert errors.ServerError("embed_timeout", "slow").exit_code == errors.TIMEOUT
    assert errors.ServerError("upstream_unavailable", "down").exit_code == errors.SERVER
    assert set(errors.ServerError.EXIT_BY_CODE) <= set(errors.CODES)


def test_the_frame_diagram_names_every_op_and_code() -> None:
    from roxi_mp.roles.query_server import QueryServer
    from supervisor.commands import COMMANDS

    doc = protocol.__doc__
    ops = {*QueryServer.OPS, *COMMANDS, *protocol.ROLE_OPS, "encode"}
    assert {"query", "stats", "notify", "restart", "status", "stop", "queries", "work", "pause"} <= ops
    for name in ops:
        assert f" {name} " in doc or f" {name}," in doc or f" {name}\n" in doc, name
    for code in errors.CODES:
        assert code in doc, code
