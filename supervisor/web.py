"""A small HTTP/1.1 server for the supervisor's resources page and metrics (issue 20).

It runs on an asyncio loop in a daemon thread of its own and serves routes that hand back
bytes prepared elsewhere (supervisor.dashboard): a request never waits for the
supervisor's loop. HTTP is parsed by h11 (no hand-written parser). Every connection is
bounded: `request_seconds` to send a whole request head (a client sending one byte a
second is cut off, and holds nobody else up: asyncio), as long to take the answer, 100
requests per connection, headers of `max_header_bytes`, no request bodies, at most
`max_connections` at once (more are answered 503). Only GET and HEAD.

A non-loopback bind is given a bearer token; every path but the `public` ones (the page
shell, which holds no data) then needs `Authorization: Bearer <token>`.

The server speaks no TLS, so asyncio is imported without ssl (`_asyncio_without_ssl`):
asyncio binds ssl when it is importable and leaves it None when not, and ssl brings 4 MB
of libssl and libcrypto into a supervisor that must stay small asleep (issue 22). A later
`import ssl` elsewhere in the process (prometheus_client, on a scrape) works as usual.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import http
import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import h11



def _asyncio_without_ssl():
    """asyncio, imported (if it is not yet) while ssl cannot be: see the module docstring."""
    blocked = "ssl" not in sys.modules
    if blocked:
        sys.modules["ssl"] = None  # an import of ssl raises ImportError, which asyncio expects
    try:
        import asyncio
    finally:
        if blocked and sys.modules.get("ssl", 0) is None:
            del sys.modules["ssl"]
    return asyncio


asyncio = _asyncio_without_ssl()
log = logging.getLogger("roxi.web")

#: requests one connection may make before it is closed
MAX_REQUESTS_PER_CONNECTION = 100
#: niceness of the server's thread: scrapes and page loads give way to the supervisor's
#: loop and, on a busy machine, to the roles answering queries
WEB_NICENESS = 10
#: bytes of a refused request body read past to keep the connection (more: it is closed)
MAX_SKIPPED_BODY = 64 * 1024
#: seconds a closing connection may take to flush its answer
CLOSE_SECONDS = 2.0
#: a closing connection reads and drops at most this much of what its client still sends ...
LINGER_BYTES = 64 * 1024
#: ... for at most this long (see WebServer._close)
LINGER_SECONDS = 0.5
#: bytes read from a socket at a time
READ_BYTES = 16 * 1024
#: methods served
METHODS = (b"GET", b"HEAD")
#: headers on every response
COMMON_HEADERS = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                  ("X-Frame-Options", "DENY"), ("Referrer-Policy", "no-referrer"))
#: what the page may load: itself only (no CDN, no other origin)
PAGE_POLICY = "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; img-src 'self' data:"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


Route = Callable[[], Response]


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the endpoint on this machine."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback or \
            getattr(ipaddress.ip_address(host), "ipv4_mapped", None) is not None and \
            ipaddress.ip_address(host).ipv4_mapped.is_loopback
    except ValueError:
        return False


def _plain(status: int, text: str, *headers: tuple[str, str]) -> Response:
    return Response(status, (text + "\n").encode(), headers=tuple(headers))


class WebServer:
    def __init__(self, host: str, port: int, routes: Mapping[str, Route], *, token: str | None = None,
                 public: Iterable[str] = (), max_connections: int = 256, request_seconds: float = 5.0,
                 max_header_bytes: int = 16 * 1024) -> None:
        self.host, self.wanted_port = host, port
        self.routes = dict(routes)
        self.token = token
        self.public = frozenset(public)
        self.max_connections = max_connections
        self.request_seconds = request_seconds
        self.max_header_bytes = max_header_bytes
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: asyncio.base_events.Server | None = None
        self.thread: threading.Thread | None = None
        self.open = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.refused = 0
        self.served: collections.Counter = collections.Counter()
        self._port = 0

    # --- life ----------------------------------------------------------------------
    def start(self, timeout: float = 5.0) -> None:
        """Bind and serve from a thread; OSError (one line) when the address cannot be bound."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            with contextlib.suppress(OSError):  # Linux: a thread is a task with its own niceness
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WEB_NICENESS)
            loop = self.loop = asyncio.new_event_loop()
            try:
                self.server = loop.run_until_complete(
                    asyncio.start_server(self._connection, self.host, self.wanted_port,
                                         backlog=max(128, self.max_connections)))
                self._port = self.server.sockets[0].getsockname()[1]
            except OSError as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self.thread = threading.Thread(target=main, name="roxi-web", daemon=True)
        self.thread.start()
        if not ready.wait(timeout):
            raise OSError(f"could not bind {self.host}:{self.wanted_port} within {timeout:g} s")
        if failure:
            self.thread.join(timeout)
            raise OSError(f"cannot bind {self.host}:{self.wanted_port}: {failure[0].strerror or failure[0]}")

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every connection, end the thread (bounded)."""
        loop = self.loop
        if loop is None or self.thread is None:
            return

        async def close() -> None:
            self.server.close()
            for writer in list(self.writers):  # every connection ends: reads see the end
                writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if tasks:
                await asyncio.wait(tasks, timeout=CLOSE_SECONDS)
            loop.stop()

        if loop.is_running():
            asyncio.run_coroutine_threadsafe(close(), loop)
        self.thread.join(timeout)
        self.loop = self.thread = None

    def stats(self) -> dict:
        return {"open": self.open, "refused": self.refused, "served": dict(self.served)}

    # --- one connection --------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.writers.add(writer)
        try:
            if self.open > self.max_connections:
                self.refused += 1
                await self._refuse(writer, 503, "too many connections")
                return
            await self._serve(reader, writer)
        except (asyncio.TimeoutError, ConnectionError, h11.LocalProtocolError):
            pass
        finally:
            self.open -= 1
            self.writers.discard(writer)
            await self._close(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_bytes)
        for served in range(MAX_REQUESTS_PER_CONNECTION):
            try:
                request = await asyncio.wait_for(self._request(reader, conn), self.request_seconds)
            except asyncio.TimeoutError:
                if conn.trailing_data[0]:  # part of a request came, too slowly
                    await self._refuse(writer, 408, "the request took too long")
                return
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint if exc.error_status_hint in (400, 414, 431) else 400
                await self._refuse(writer, status, "bad request")
                return
            if request is None:
                return  # the client closed
            last = served == MAX_REQUESTS_PER_CONNECTION - 1
            response, head = self._answer(request, conn)
            keep = await self._send(writer, conn, response, head=head, close=last)
            if keep and conn.their_state is h11.SEND_BODY:  # a body we refused: skip a small one
                keep = await self._skip_body(reader, conn)
            if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _request(self, reader: asyncio.StreamReader, conn: h11.Connection) -> h11.Request | None:
        """The next request head, or None at the end of the stream. h11 bounds a head that
        is still incomplete; one that arrives whole is bounded here by the bytes it took."""
        received = len(conn.trailing_data[0])
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(READ_BYTES)
                received += len(data)
                conn.receive_data(data)  # b"" marks the end
                if not data and conn.their_state is h11.IDLE:
                    return None
                continue
            if isinstance(event, h11.Request):
                if received > self.max_header_bytes + len(conn.trailing_data[0]):
                    raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
                return event
            if isinstance(event, h11.ConnectionClosed):
                return None
            raise h11.RemoteProtocolError("unexpected event", error_status_hint=400)

    async def _skip_body(self, reader: asyncio.StreamReader, conn: h11.Connection) -> bool:
        """Read past a request body of at most MAX_SKIPPED_BODY bytes; False if it is larger."""
        skipped = 0
        try:
            async with asyncio.timeout(self.request_seconds):
                while (event := conn.next_event()) is not h11.PAUSED:
                    if event is h11.NEED_DATA:
                        data = await reader.read(READ_BYTES)
                        if not data:
                            return False
                        conn.receive_data(data)
                    elif isinstance(event, h11.Data):
                        skipped += len(event.data)
                        if skipped > MAX_SKIPPED_BODY:
                            return False
                    elif isinstance(event, h11.EndOfMessage):
                        return True
        except (asyncio.TimeoutError, h11.RemoteProtocolError):
            return False
        return False

    async def _close(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Close after the answer went out; a client that does not read is dropped. Input
        the client sent and we did not read would make the kernel reset the connection,
        and the client could lose the answer (a 400, a 431): stop writing, read and drop
        up to LINGER_BYTES for up to LINGER_SECONDS first."""
        try:
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(LINGER_SECONDS):
                dropped = 0
                while dropped < LINGER_BYTES and (data := await reader.read(READ_BYTES)):
                    dropped += len(data)
        except (asyncio.TimeoutError, OSError):
            pass
        try:
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), CLOSE_SECONDS)
        except (asyncio.TimeoutError, OSError):
            writer.transport.abort()

    def _answer(self, request: h11.Request, conn: h11.Connection) -> tuple[Response, bool]:
        """The response to a request head, and whether it is a HEAD."""
        head = request.method == b"HEAD"
        if request.http_version not in (b"1.0", b"1.1"):
            return _plain(505, "HTTP/1.0 and 1.1 only"), head
        if request.method not in METHODS:
            return _plain(405, "only GET and HEAD", ("Allow", "GET, HEAD")), head
        headers = {name.lower(): value for name, value in request.headers}
        if int(headers.get(b"content-length", b"0") or 0) > 0 or b"transfer-encoding" in headers:
            return _plain(413, "a GET carries no body"), head
        path = request.target.split(b"?", 1)[0].split(b"#", 1)[0].decode("ascii", "replace")
        if self.token is not None and path not in self.public:
            scheme, _, given = headers.get(b"authorization", b"").strip().partition(b" ")
            import hmac  # only with a token (a non-loopback bind): it loads libcrypto

            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token.encode()):
                return _plain(401, "a bearer token is needed (see web.token in the data directory)",
                              ("WWW-Authenticate", 'Bearer realm="roxi"')), head
        route = self.routes.get(path)
        if route is None:
            return _plain(404, "not found"), head
        try:
            return route(), head
        except Exception:  # a bug in a route: one 500, the server stays up
            log.exception("web route %s failed", path)
            return _plain(500, "internal error"), head

    async def _refuse(self, writer: asyncio.StreamWriter, status: int, text: str) -> None:
        """A final error answer outside h11's state machine (no request was parsed)."""
        self.served[status] += 1
        body = (text + "\n").encode()
        head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        writer.write(head + body)
        await asyncio.wait_for(writer.drain(), self.request_seconds)

    async def _send(self, writer: asyncio.StreamWriter, conn: h11.Connection, response: Response, *,
                    head: bool, close: bool) -> bool:
        """Write `response` (no body for HEAD) within request_seconds; whether the
        connection may serve another request."""
        headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body))),
                   *COMMON_HEADERS, *response.headers]
        if response.content_type.startswith("text/html"):
            headers.append(("Content-Security-Policy", PAGE_POLICY))
        if close or response.status >= 400 and response.status not in (401, 404, 405):
            headers.append(("Connection", "close"))
        self.served[response.status] += 1
        data = conn.send(h11.Response(status_code=response.status, headers=headers,
                                      reason=http.HTTPStatus(response.status).phrase))
        if not head:
            data += conn.send(h11.Data(data=response.body))
        data += conn.send(h11.EndOfMessage())
        writer.write(data)
        await asyncio.wait_for(writer.drain(), self.request_seconds)
        return conn.our_state is h11.DONE and not close
