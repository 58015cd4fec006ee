"""roxi_mp.client over a real socket pair: the frames a request sends (a query vector as
float32 bytes, large frames without a copy), replies matched by id (an earlier request's
late answer is skipped), and bounded waits (a send nobody takes, a reply that never comes).
A ROUTER socket in the test plays the server."""

from __future__ import annotations

import threading
from typing import Iterator

import numpy as np
import pytest
import zmq

from roxi_mp import protocol
from roxi_mp.client import QueryClient
from roxi_mp.errors import ServerError, Timeout


@pytest.fixture
def router(tmp_path) -> Iterator[tuple[zmq.Socket, str]]:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path / 'q.sock'}"
    sock.bind(endpoint)
    yield sock, endpoint
    sock.close(0)


def serve(sock: zmq.Socket, answer, *, count: int = 1) -> tuple[threading.Thread, list[list[bytes]]]:
    """Answer `count` requests in a thread: answer(request map) -> reply maps to send, in order."""
    seen: list[list[bytes]] = []

    def run() -> None:
        for _ in range(count):
            if not sock.poll(5000):
                return
            frames = sock.recv_multipart()
            seen.append(frames)
            msg = protocol.unpack_map(frames[2], max_bytes=1 << 20)
            for reply in answer(msg):
                sock.send_multipart([frames[0], b"", protocol.pack(reply)])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, seen


@pytest.mark.parametrize("vector", [np.arange(8, dtype=np.float64), np.arange(8, dtype=">f4").reshape(1, 8),
                                    np.arange(16, dtype=np.float32).reshape(1, 16)[:, ::2]],
                         ids=["float64 1-d", "big-endian 2-d", "strided"])
def test_a_query_vector_travels_as_little_endian_float32_bytes(router, vector) -> None:
    sock, endpoint = router
    thread, seen = serve(sock, lambda msg: [protocol.ok(msg["id"], hits=[{"rank": 1}])])
    with QueryClient(endpoint, timeout=5) as client:
        assert client.query_vector(vector, k=3, with_text=False) == [{"rank": 1}]
    thread.join(5)
    identity, delimiter, body, data = seen[0]
    msg = protocol.unpack_map(body, max_bytes=1 << 20)
    assert delimiter == b"" and msg["op"] == "query" and msg["k"] == 3 and msg["with_text"] is False
    assert msg["dtype"] == "float32" and msg["shape"] == list(vector.shape)
    np.testing.assert_array_equal(protocol.decode_array(msg, data, dim=8).ravel(), np.asarray(vector, dtype=np.float32).ravel())


def test_frames_small_and_large_arrive_whole(router) -> None:
    sock, endpoint = router
    thread, seen = serve(sock, lambda msg: [protocol.ok(msg["id"])])
    big = np.random.default_rng(0).bytes(100_017)  # above pyzmq's copy threshold: sent without a copy
    small = memoryview(b"small frame")
    with QueryClient(endpoint, timeout=5) as client:
        client.call_raw("ping", frames=[small, big, b"last"])
    thread.join(5)
    assert seen[0][3:] == [b"small frame", big, b"last"]


def test_an_answer_to_another_request_is_skipped(router) -> None:
    sock, endpoint = router
    thread, _ = serve(sock, lambda msg: [protocol.ok("someone-else", pong=False), protocol.ok(msg["id"], pong=True)])
    with QueryClient(endpoint, timeout=5) as client:
        assert client.ping() is True
    thread.join(5)


def test_a_reply_that_never_comes_times_out_and_its_late_answer_never_reaches_the_next(router) -> None:
    sock, endpoint = router
    with QueryClient(endpoint, timeout=0.2) as client:
        with pytest.raises(Timeout):
            client.ping()
        assert sock.poll(5000)
        frames = sock.recv_multipart()  # the first request, answered too late
        sock.send_multipart([frames[0], b"", protocol.pack(protocol.ok(
            protocol.unpack_map(frames[2], max_bytes=4096)["id"], pong=False))])
        thread, _ = serve(sock, lambda msg: [protocol.ok(msg["id"], pong=True)])
        client.timeout = 5.0  # a loaded machine may take its time with the answer that counts
        assert client.ping() is True  # a new socket: the late answer went to the old one
        thread.join(5)


def test_an_error_reply_raises_with_its_code(router) -> None:
    sock, endpoint = router
    thread, _ = serve(sock, lambda msg: [protocol.error(msg["id"], "bad_request", "k must be an integer")])
    with QueryClient(endpoint, timeout=5) as client, pytest.raises(ServerError) as info:
        client.query_vector(np.ones(4, dtype=np.float32))
    assert info.value.code == "bad_request"
    thread.join(5)


def test_a_send_nobody_takes_times_out() -> None:
    with QueryClient("tcp://127.0.0.1:9", timeout=0.2) as client, pytest.raises(Timeout):  # nothing listens
        client.ping()
