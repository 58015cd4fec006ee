"""supervisor.web: the resources page's HTTP server, over real sockets (issue 20's bad input)."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from supervisor.web import Response, WebServer, is_loopback

from ..conftest import PATIENCE

PAGE = b"<!doctype html><title>page</title>"


def boom() -> Response:
    raise ZeroDivisionError("a bug in a route")


@pytest.fixture
def serve():
    servers = []

    def make(**kwargs) -> WebServer:
        routes = {"/": lambda: Response(200, PAGE, "text/html; charset=utf-8"),
                  "/status.json": lambda: Response(200, b'{"ok": true}', "application/json"),
                  "/boom": boom}
        server = WebServer("127.0.0.1", 0, routes, **{"request_seconds": 1.0, **kwargs})
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def raw(server: WebServer, data: bytes, *, timeout: float = 5.0) -> bytes:
    """What the server answers to `data` sent as is, until it closes or `timeout`."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return out


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def test_get_head_and_the_headers_every_answer_has(serve) -> None:
    server = serve()
    with httpx.Client(base_url=server.url) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.content == PAGE
        assert page.headers["cache-control"] == "no-store" and page.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'self'" in page.headers["content-security-policy"]
        head = client.head("/status.json")
        assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == "12"
        assert client.get("/status.json?x=1#y").json() == {"ok": True}  # the query string is not the path
        assert client.get("/nothing").status_code == 404
    assert server.stats()["served"][200] >= 3


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_methods_other_than_get_and_head_are_405_with_allow(serve, method) -> None:
    server = serve()
    with httpx.Client(base_url=server.url) as client:
        reply = client.request(method, "/")
        assert reply.status_code == 405 and reply.headers["allow"] == "GET, HEAD"
        assert client.get("/").status_code == 200  # the same connection goes on


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
    (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", 431),
    (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 413),
    (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413),
])
def test_malformed_oversized_and_bodies_get_one_answer_and_the_server_goes_on(serve, request_bytes, status) -> None:
    server = serve()
    assert status_of(raw(server, request_bytes)) == status
    assert httpx.get(server.url).status_code == 200


def test_a_route_that_raises_is_a_500_and_the_next_request_is_served(serve, caplog) -> None:
    server = serve()
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/boom").status_code == 500
        assert client.get("/").status_code == 200
    assert "web route /boom failed" in caplog.text


def test_a_client_sending_a_byte_a_second_is_cut_off_and_holds_nobody_up(serve) -> None:
    server = serve(request_seconds=1.0)
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    started = time.monotonic()
    answered = []
    for byte in b"GET / HTTP/1.1\r\nHost: x\r\n":
        try:
            slow.sendall(bytes([byte]))
        except OSError:
            break  # cut off
        t = time.monotonic()
        # answered before the slow client's own deadline (1 s), even on a loaded machine
        answered.append(httpx.get(server.url, timeout=5).status_code == 200 and time.monotonic() - t < 0.9)
        time.sleep(0.2)
        if time.monotonic() - started > 3:
            break
    reply = slow.recv(1000)
    took = time.monotonic() - started
    slow.close()
    assert status_of(reply) == 408 and 1.0 <= took < 1.0 + PATIENCE / 4
    assert answered and all(answered)


def test_an_idle_connection_is_closed_after_the_deadline(serve) -> None:
    server = serve(request_seconds=0.5)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        started = time.monotonic()
        assert s.recv(100) == b""  # closed without an answer: it asked nothing
        assert time.monotonic() - started < 0.5 + PATIENCE / 4


def test_200_concurrent_connections_are_all_answered(serve) -> None:
    server = serve(max_connections=256, request_seconds=5.0)
    conns = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(200)]
    try:
        for c in conns:
            c.sendall(b"GET /status.json HTTP/1.1\r\nHost: x\r\n\r\n")
        assert all(status_of(c.recv(4096)) == 200 for c in conns)
    finally:
        for c in conns:
            c.close()


def test_connections_over_the_cap_get_503_and_the_server_recovers(serve) -> None:
    server = serve(max_connections=5, request_seconds=5.0)
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(5)]
    try:
        time.sleep(0.2)  # accepted
        assert status_of(raw(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")) == 503
        assert server.stats()["refused"] >= 1
    finally:
        for c in held:
            c.close()
    deadline = time.monotonic() + PATIENCE
    while server.stats()["open"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(server.url).status_code == 200


def test_a_token_guards_every_path_but_the_public_ones(serve) -> None:
    server = serve(token="s3cret", public=("/",))
    with httpx.Client(base_url=server.url) as client:
        missing = client.get("/status.json")
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/status.json", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/status.json", headers={"Authorization": "s3cret"}).status_code == 401
        assert client.get("/status.json", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/").status_code == 200  # the page shell: no data in it


def test_loopback_hosts() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "::1", "[::1]", "localhost", "LOCALHOST", "127.0.0.2", "::ffff:127.0.0.1"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.org"))


def test_a_taken_port_is_a_one_line_oserror(serve) -> None:
    server = serve()
    other = WebServer("127.0.0.1", server.port, {})
    with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{server.port}"):
        other.start()


def test_stop_returns_promptly_with_slow_clients_connected(serve) -> None:
    server = serve(request_seconds=30.0)
    slow = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(3)]
    for s in slow:
        s.sendall(b"GET / HT")
    time.sleep(0.1)
    started = time.monotonic()
    server.stop(timeout=5)
    assert time.monotonic() - started < 5
    assert not any(t.name == "roxi-web" and t.is_alive() for t in threading.enumerate())
    for s in slow:
        s.close()
