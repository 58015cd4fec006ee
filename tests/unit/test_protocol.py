"""Unit tests of roxi_mp.protocol: msgpack maps, version, envelopes and vector frames."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest

from roxi_mp import protocol
from roxi_mp.errors import BAD_INPUT, BadInput
from roxi_mp.protocol import (
    E_BAD_REQUEST,
    E_BAD_VERSION,
    E_TOO_LARGE,
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
