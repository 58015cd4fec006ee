"""Documents role: clients put, delete, get and list documents on a ROUTER socket of its own.

A process of its own, beside the query server, so an upload never delays an answer and
never blocks the supervisor's loop. It speaks the query socket's protocol (framing,
version, error replies: roxi_mp.protocol) with a message limit sized for documents
(`documents.max_document_bytes` plus room for the other fields; a document over the limit
gets a `too_large` reply, only a request over twice that is dropped by zmq), and follows
the same CURVE rule (a tcp:// endpoint needs `roxi keys generate`). A put is checked and
chunked by roxi_mp.documents, then stored in one transaction by `Store.put_document`.

A put of text is answered in the step it arrives. A PDF, HTML page or Word document is
checked at once too (a bad field is answered at once), then waits in a bounded queue
(documents.max_pending_extractions; over it a `busy` reply) for the extraction child
(roxi_mp.extract.extractor: its own process with a time and memory limit, one document at
a time), whose pipe the loop polls beside the socket: an extraction of 30 s never holds up
the heartbeat. Its reply goes out, with the envelope kept from the request, when the
extraction ends: the put's outcome, or `bad_request` with the one-line reason.

Never blocking: its SQLite waits are bounded (store.busy_timeout_ms, and at most half the
time between the supervisor's liveness deadline and a heartbeat, so a long wait for the
write lock is an error reply, `busy`, never a role killed as hung), requests are handled
within a time budget per loop step, and the embedders hear of new chunks through a counter
in the heartbeat (`work`), which the supervisor turns into its "work" command; the role
itself sends nothing that could wait. Idle for `embedder.idle_seconds` (and nothing being
extracted), it closes its SQLite connection and its extraction child and reports itself
asleep, as the indexer does; the next request opens them again. `stats` and `ping` never
open them.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import sqlite3
import time
from typing import Any, Callable, Iterator

import zmq

from .. import documents, keys, memory, protocol
from ..config import Config
from ..errors import E_BAD_REQUEST, E_INTERNAL, BadInput, Busy, RoxiError, StoreError
from ..extract import Extracted, ExtractError
from ..extract.extractor import Extractor
from ..protocol import ProtocolError
from ..store import Store
from .base import Role, run
from .extractions import Extractions, Waiting

log = logging.getLogger("roxi.documents")

#: requests handled per loop step before the heartbeat gets a turn
MAX_REQUESTS_PER_STEP = 64
#: room in a request for everything but the content, bytes (on top of the limits of key,
#: title and metadata, which are counted in characters or JSON bytes)
HEADROOM_BYTES = 64 * 1024
#: bytes of requests the socket may queue per client before zmq pushes back on the sender
#: (256 MiB): a queue of 1000 (limits.socket_hwm) 16 MiB documents would be 16 GB
QUEUE_BUDGET_BYTES = 256 << 20
#: list states a client may ask for; None lists live and pending versions
LIST_STATES = ("live", "pending", "failed")
#: page size of a list that names none (at most documents.list_max)
DEFAULT_LIST_LIMIT = 100


class DState(enum.Enum):
    STARTING = "starting"
    ASLEEP = "asleep"  # idle: no SQLite connection held
    AWAKE = "awake"  # the connection is opened by the first request that needs it


class DocumentsRole(Role):
    role = "documents"

    def __init__(self, cfg: Config, ctx: zmq.Context, *, name: str | None = None) -> None:
        super().__init__(cfg, ctx, name=name)
        self.state = DState.STARTING
        # Opened by initialize() (the store on demand); shutdown() closes what is not None.
        self.store: Store | None = None
        self.router: zmq.Socket | None = None
        self.auth = None  # the CURVE authenticator, when the endpoint is tcp://
        self.poller: zmq.Poller | None = None
        self.last_request = 0.0
        self.puts = self.deletes = self.gets = self.lists = 0
        self.added = self.replaced = self.unchanged = 0
        self.errors = self.dropped = self.sleeps = 0
        self.bytes_received = 0
        self.work = 0  # puts that left chunks to embed or copy: the supervisor says "work" when it grows
        # Puts of PDF, HTML or DOCX waiting for their content to be extracted (its worker
        # is started by the first one, killed by sleep).
        self.extractions = Extractions(lambda: self.new_extractor(),
                                       limit=cfg.documents.max_pending_extractions)
        self.deferred: Waiting | None = None  # set by op_put, queued by handle() with its envelope
        self.watched_fd: int | None = None  # the extractor's pipe, in the poller while it works
        self.tokens = itertools.count(1)
        self.extracted = self.extract_failures = 0

    def initialize(self) -> None:
        lim = self.cfg.limits
        # The socket's hard cap is twice the request limit: a document between the two gets
        # a too_large error reply, only a grossly oversized one is dropped by zmq unanswered.
        hwm = max(4, min(lim.socket_hwm, QUEUE_BUDGET_BYTES // self.max_request_bytes()))
        self.router = protocol.configure(self.ctx.socket(zmq.ROUTER), hwm=hwm,
                                         max_message_bytes=2 * self.max_request_bytes())
        self.auth = keys.secure_if_needed(self.cfg, self.ctx, self.router, "documents")
        self.router.bind(self.cfg.endpoint("documents"))
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.watch_wakers(self.poller)  # a command or a stop signal ends a wait at once
        self.db()  # a store this roxi cannot use is a boot error, not a reply to every put
        self.close_db()  # reopened by the first request that needs it
        # Running, then asleep once idle, as the indexer: a fresh system reads "running".
        self.last_request = time.monotonic()
        self.state = DState.AWAKE

    def max_request_bytes(self) -> int:
        d = self.cfg.documents
        # Characters of key and title take up to 4 bytes each in UTF-8.
        return d.max_document_bytes + d.max_metadata_bytes + 4 * (d.max_key_chars + d.max_title_chars) + HEADROOM_BYTES

    def busy_timeout_ms(self) -> int:
        """The SQLite busy wait: store.busy_timeout_ms, but short enough that the heartbeat
        still goes out in time (a put waiting for the write lock is not a hung role)."""
        sv = self.cfg.supervisor
        return max(1, min(self.cfg.store.busy_timeout_ms,
                          int(1000 * (sv.liveness_seconds - sv.heartbeat_seconds) / 2)))

    # --- the store ---------------------------------------------------------------------
    def db(self) -> Store:
        """The SQLite connection, opened on demand (closed while asleep)."""
        if self.store is None:
            # The supervisor migrated the store before spawning any role.
            self.store = Store(self.cfg.db_path, busy_timeout_ms=self.busy_timeout_ms(), migrate=False)
        return self.store

    def close_db(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    @contextlib.contextmanager
    def store_errors(self) -> Iterator[None]:
        """SQLite errors as error replies: a lock held too long is `busy` (try again), the
        rest `store`; the connection is reopened for the next request."""
        try:
            yield
        except sqlite3.Error as exc:
            self.close_db()  # whatever state it was left in, the next request starts afresh
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise Busy(f"the store is busy (its write lock was held for over {self.busy_timeout_ms()} ms); "
                           "try again") from None
            log.error("store error: %s", exc)
            raise StoreError(f"store error: {exc}") from None

    # --- main loop ---------------------------------------------------------------------
    def loop(self, now: float) -> None:
        self.watch_extractor()
        events = dict(self.poller.poll(int(self.poll_timeout() * 1000)))
        if self.router in events:
            # Bounded in count and time: a queue of large puts must not keep the heartbeat
            # from going out (the supervisor would take a busy role for a hung one).
            budget = time.monotonic() + self.cfg.supervisor.heartbeat_seconds / 2
            for _ in range(MAX_REQUESTS_PER_STEP):
                if not self.router.get(zmq.EVENTS) & zmq.POLLIN or time.monotonic() >= budget:
                    break
                self.handle(self.router.recv_multipart(zmq.NOBLOCK), time.monotonic())
        self.advance_extractions(now)
        # `now` is the step's start: a request handled in this step is never "idle" yet.
        if self.state is DState.AWAKE and now - self.last_request >= self.cfg.embedder.idle_seconds:
            self.sleep()

    def handle(self, frames: list[bytes], now: float) -> None:
        self.bytes_received += sum(len(f) for f in frames)
        answered = protocol.answer(frames, lambda msg, extra: self.dispatch(msg, extra, now),
                                   max_bytes=self.max_request_bytes(), on_internal=self._internal)
        if answered is None:
            self.dropped += 1  # nothing to answer: no request frame at all
            return
        out, ok = answered
        waiting, self.deferred = self.deferred, None
        if waiting is not None and ok:  # answered once its content is extracted
            waiting.envelope = out[:-1]
            self.extractions.add(waiting)
            return
        self.send(out, ok)

    def send(self, out: list[bytes], ok: bool) -> None:
        self.errors += not ok
        try:
            self.router.send_multipart(out, zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError):
            self.dropped += 1  # client gone or not reading: never block the role on it

    def reply(self, envelope: list[bytes], request_id: Any, result: Callable[[], dict]) -> None:
        """A late reply, built as protocol.answer builds one: `result()`'s fields, or the
        error it raised."""
        try:
            reply = protocol.ok(request_id, **result())
        except RoxiError as exc:
            reply = protocol.error(request_id, exc.code if isinstance(exc.code, str) else E_BAD_REQUEST, str(exc))
        except Exception as exc:
            self._internal(exc)
            reply = protocol.error(request_id, E_INTERNAL, f"internal error: {exc}")
        self.send(envelope + [protocol.pack(reply)], reply["ok"])

    def _internal(self, exc: BaseException) -> None:
        log.error("request failed", exc_info=exc)

    def dispatch(self, msg: dict, extra: list[bytes], now: float) -> dict:
        op = msg.get("op")
        handler = self.OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            raise ProtocolError(protocol.E_UNKNOWN_OP, f"unknown op {op!r} (known: {', '.join(self.OPS)})")
        if extra:
            raise BadInput(f"op {op} takes one request frame, got {1 + len(extra)}")
        return handler(self, msg, now)

    def wake(self, now: float) -> Store:
        """A request that reads or writes the store: awake, and the store open."""
        self.stir(now)
        return self.db()

    def stir(self, now: float) -> None:
        """Awake (reported as running) until idle again."""
        self.last_request = now
        self.state = DState.AWAKE

    # --- ops ---------------------------------------------------------------------------
    def op_put(self, msg: dict, now: float) -> dict:
        # Checked (and text chunked) before the store is touched: a bad put opens nothing.
        checked = documents.check(msg.get("key"), msg.get("content"), content_type=msg.get("content_type"),
                                  title=msg.get("title"), metadata=msg.get("metadata"), limits=self.cfg.documents)
        if checked.needs_extraction:
            return self.queue_extraction(msg.get("id"), checked, now)
        return self.store_upload(self.finish(checked, None), now)

    def finish(self, checked: documents.Checked, extracted: Extracted | None) -> documents.Upload:
        s = self.cfg.store
        return documents.finish(checked, extracted, limits=self.cfg.documents, chunk_words=s.chunk_words,
                                chunk_overlap=s.chunk_overlap)

    def store_upload(self, upload: documents.Upload, now: float) -> dict:
        with self.store_errors():
            result = self.wake(now).put_document(**upload.store_fields())
        self.puts += 1
        if result.outcome == "unchanged":
            self.unchanged += 1
        else:
            self.added += result.outcome == "added"
            self.replaced += result.outcome == "replaced"
            if result.chunks > 0:  # told with a heartbeat at once: suspended embedders start on it
                self.work += 1
                self.beat_soon = True
        return {"outcome": result.outcome, "key": result.key, "version": result.version,
                "chunks": result.chunks, "reused": result.reused, "superseded": result.superseded}

    def op_delete(self, msg: dict, now: float) -> dict:
        key = documents.check_key(msg.get("key"), max_chars=self.cfg.documents.max_key_chars)
        with self.store_errors():
            versions = self.wake(now).delete_document(key)  # NotFound: a not_found reply
        self.deletes += 1
        return {"deleted": versions}

    def op_get(self, msg: dict, now: float) -> dict:
        key = documents.check_key(msg.get("key"), max_chars=self.cfg.documents.max_key_chars)
        with self.store_errors():
            found = self.wake(now).document(key)
        self.gets += 1
        return found

    def op_list(self, msg: dict, now: float) -> dict:
        state, after, limit = self._list_args(msg)
        with self.store_errors():
            store = self.wake(now)
            # One row per version: a key may have a live and a pending one, and a page must
            # not end between them (the next page starts after the last key).
            rows = store.documents(state=state, after=after, limit=limit + 1)
        self.lists += 1
        if len(rows) <= limit:
            return {"documents": rows, "next": None}
        page = rows[:limit]
        if page[-1]["key"] == rows[limit]["key"]:
            cut = [r for r in page if r["key"] != rows[limit]["key"]]
            page = cut or rows[:limit + 1]  # a page of one key's two versions: one over the limit
        return {"documents": page, "next": page[-1]["key"]}

    def _list_args(self, msg: dict) -> tuple[str | None, str, int]:
        state, after = msg.get("state"), msg.get("after")
        if state is not None and state not in LIST_STATES:
            raise BadInput(f"state must be one of {', '.join(LIST_STATES)}, got {state!r}")
        if after is not None and not isinstance(after, str):
            raise BadInput(f"after must be a key (a string), got {type(after).__name__}")
        list_max = self.cfg.documents.list_max
        limit = msg.get("limit", min(DEFAULT_LIST_LIMIT, list_max))
        if type(limit) is not int or not 1 <= limit <= list_max:
            raise BadInput(f"limit must be an integer in [1, {list_max}], got {limit!r}")
        return state, after or "", limit

    def op_stats(self, msg: dict, now: float) -> dict:
        return self.stats()

    def op_ping(self, msg: dict, now: float) -> dict:
        return {"pong": True}

    # --- extraction --------------------------------------------------------------------------
    def queue_extraction(self, request_id: Any, checked: documents.Checked, now: float) -> dict:
        """Queue a put for extraction (handle() adds it with its envelope): {} for now."""
        self.extractions.check_room()  # Busy: a full queue is told at once
        self.deferred = Waiting(next(self.tokens), request_id, checked)
        self.stir(now)  # not idle while it waits: the role sleeps only once it is answered
        return {}

    def advance_extractions(self, now: float) -> None:
        for done, result in self.extractions.advance(now):
            self.complete(done, result, now)

    def complete(self, done: Waiting, result: Extracted | BaseException, now: float) -> None:
        """The late reply of a put: stored once extracted, or the extraction's error."""
        def stored() -> dict:
            if isinstance(result, BaseException):
                raise result
            return self.store_upload(self.finish(done.checked, result), now)

        if isinstance(result, ExtractError):
            self.extract_failures += 1
            log.info("put %r: %s", done.checked.key, result)
        self.extracted += not isinstance(result, BaseException)
        self.stir(now)  # idle from the reply on, not from the request
        self.reply(done.envelope, done.request_id, stored)

    def new_extractor(self) -> Extractor:
        return Extractor(self.cfg.extract)

    def watch_extractor(self) -> None:
        """The poller watches the extractor's pipe while it works, so its answer ends the
        wait at once (the worker, and so the pipe, changes after a kill)."""
        fd = self.extractions.fileno()
        if fd != self.watched_fd:
            if self.watched_fd is not None:
                self.poller.unregister(self.watched_fd)
            if fd is not None:
                self.poller.register(fd, zmq.POLLIN)
            self.watched_fd = fd

    OPS = {"put": op_put, "delete": op_delete, "get": op_get, "list": op_list, "stats": op_stats,
           "ping": op_ping}

    # --- sleep ---------------------------------------------------------------------------
    def sleep(self) -> None:
        """Close the SQLite connection (its page cache goes with it) and the extraction
        child, and give memory back; not while a put waits for extraction (asked to sleep
        then, the role sleeps once idle after answering it)."""
        if self.extractions:
            return
        was_awake = self.state is DState.AWAKE
        self.close_db()
        self.extractions.close()
        self.state = DState.ASLEEP
        memory.release(file_pages=True)  # a large put's buffers, and the libraries' pages
        if was_awake:
            self.sleeps += 1
            log.info("asleep")

    def command(self, msg: dict, now: float) -> None:
        op = msg.get("op")
        if op == "sleep":
            self.sleep()
        elif op == "wake":  # nothing to load: awake until idle again
            self.stir(now)

    def stats(self) -> dict:
        return {"state": self.state_name(), "puts": self.puts, "added": self.added, "replaced": self.replaced,
                "unchanged": self.unchanged, "deletes": self.deletes, "gets": self.gets, "lists": self.lists,
                "errors": self.errors, "dropped": self.dropped, "bytes_received": self.bytes_received,
                "work": self.work, "sleeps": self.sleeps, "extracting": len(self.extractions),
                "extracted": self.extracted, "extract_failures": self.extract_failures}

    def state_name(self) -> str:
        if self.state is DState.STARTING:
            return "starting"
        return "asleep" if self.state is DState.ASLEEP else "running"

    def info(self) -> dict:
        if self.state is DState.STARTING:
            return {"state": "starting"}
        return self.stats()

    def shutdown(self) -> None:
        for w in self.extractions.drain():  # told at once, not left to time out
            self.reply(w.envelope, w.request_id, _stopping)
        self.extractions.close()
        if self.router is not None:
            self.router.close(0)
        if self.auth is not None:
            self.auth.stop()
        self.close_db()


def _stopping() -> dict:
    raise Busy("the documents endpoint is stopping; put again once it is back")


def main(argv: list[str] | None = None) -> int:
    return run(DocumentsRole, argv)


if __name__ == "__main__":
    raise SystemExit(main())
