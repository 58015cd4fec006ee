"""Query-server role: answers searches on a ROUTER socket from the mapped vectors file.

The vectors file is laid out as a faiss SQ-fp16 index file, so "loading" it is a zero-copy
mapping handed to faiss (roxi_mp.vectors.open_index), well under a millisecond. Following a
commit is therefore just mapping the file again with the new row count (no rebuild, no
float32 copy). Deep sleep drops the faiss object (the only holder of the mapping, so the
file is unmapped and its pages go back to the OS), the query model, the result cache and
the SQLite connection, then collects garbage and trims the heap. The next query, or
`wake`, maps it all again. The server learns of commits from the indexer's PUB events,
also while asleep (a number, nothing mapped), and while awake also polls the store's rows
and epoch in case an event was missed (a compaction's event has fewer rows). Status and admin calls (`stats`, `ping`) never wake it.
With a network backend (`Embedder.remote`) a text query is embedded off the loop and
answered when its vector comes or its deadline passes (roxi_mp.query_embed).

Deletes and replacements take effect the moment they commit: each query reads, in one
read snapshot of the store, which vectors file, rows and visibility sequence are current,
brings the mapping, the hidden rows and the result cache up to them (roxi_mp.query_view),
then searches and looks its hits up in that same snapshot; a query that finds nothing
committed since the last such read (one pread of SQLite's WAL index) needs no snapshot,
and looks its hits up in the row fields the server reads while idle (FIELDS_STEP_ROWS
rows per loop step), asking SQLite only whether their documents are still live.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import sys
import time
from typing import Any, Callable, TypeVar

import faiss
import msgpack
import numpy as np
import zmq

from .. import hybrid, keys, memory, protocol
from ..cache import ResultCache
from ..config import Config
from ..embedders import make_embedder, rate_share
from ..model_process import ModelProcess
from ..fusion import HYBRID, LEXICAL, MODES
from ..histogram import Histogram
from ..errors import E_INTERNAL, BadInput, ModelMismatch, RoxiError, UpstreamUnavailable
from ..protocol import ProtocolError
from ..query_embed import Parked, QueryEmbeds
from ..query_view import RowView
from ..store import Store
from ..store_docs import Visibility
from ..store_hits import RECORD
from ..search import Searcher
from ..steps import StepTimes
from .base import Role, run

log = logging.getLogger("roxi.query")
T = TypeVar("T")

#: requests handled per loop step before heartbeats and follow-ups get a turn
MAX_REQUESTS_PER_STEP = 256
#: the fields of a plain vector query, the one kind QueryServer.fast_query answers
FAST_FIELDS = frozenset({"v", "id", "op", "k", "with_text", "dtype", "shape"})
#: float32 vectors on the wire are little-endian; a machine of the same order reads them as they are
LITTLE_ENDIAN = sys.byteorder == "little"
#: its request map is a few dozen bytes; anything longer goes the general way
FAST_REQUEST_BYTES = 512
#: longest wait between ZeroMQ's attempts to reach the indexer's events socket, ms. While
#: the indexer is suspended (deep sleep) nothing listens there, and at zmq's default (every
#: 100 ms) the attempts woke the query server's I/O thread ~7 times a second, asleep.
#: Events only hasten what the follow poll and each query's commit mark find anyway.
EVENTS_RECONNECT_MAX_MS = 5_000
#: rows whose fields (RowFields) are read per idle loop step: about 5 ms (100k rows took
#: 0.12 s in all), the longest a query arriving meanwhile waits for it
FIELDS_STEP_ROWS = 4_000


class QState(enum.Enum):
    STARTING = "starting"
    ASLEEP = "asleep"
    AWAKE = "awake"


class QueryServer(Role):
    role = "query"

    def __init__(self, cfg: Config, ctx: zmq.Context, *, name: str | None = None) -> None:
        super().__init__(cfg, ctx, name=name)
        self.state = QState.STARTING
        # Opened by initialize() (the store also on demand); shutdown() closes what is not None.
        self.store: Store | None = None
        self.model = None  # a ModelProcess or an in-process embedder
        self.embeds: QueryEmbeds | None = None  # text queries waiting for a remote model
        self.packer = msgpack.Packer(use_bin_type=True)  # fast_query's (protocol.pack's settings)
        self.envelope: list[bytes] = []  # of the request being handled, for op_query to park it
        self.parked_now = False  # op_query parked the request: handle() sends nothing yet
        self.cache: ResultCache | None = None
        self.router: zmq.Socket | None = None  # queries from clients
        self.sub: zmq.Socket | None = None  # generation events from the indexer
        self.auth = None  # the CURVE authenticator, when keys are required
        self.poller: zmq.Poller | None = None
        self.view = RowView(cfg, willneed=cfg.query.prewarm)  # maps nothing while asleep
        self.model_checked = False  # the store's model matches ours (until the store closes)
        self.vector_options: hybrid.Options | None = None  # of a vector query naming no option
        # The store's vectors epoch, visibility sequence and committed rows as last heard:
        # read from the store, the rows also from the indexer's events.
        self.known = Visibility(0, 0, 0)
        self.last_query = self.last_follow = self.last_trim = 0.0
        self.served = self.errors = self.dropped = self.sleeps = self.stale_dropped = 0
        self.fast_served = 0  # of `served`, answered by fast_query
        #: for /metrics: answer time by mode, errors by code (this process's life)
        self.durations = {mode: Histogram() for mode in MODES}
        self.error_codes: collections.Counter = collections.Counter()
        self.steps = StepTimes()  # where text queries' time goes, for stats

    def initialize(self) -> None:
        qcfg, lim = self.cfg.query, self.cfg.limits
        if qcfg.model_process and self.cfg.embedder.backend == "minilm":
            self.model = ModelProcess(self.cfg)
        else:
            self.model = make_embedder(self.cfg, share=rate_share(self.cfg, "query"))
        self.cache = ResultCache(max_entries=qcfg.cache_entries, ttl_seconds=qcfg.cache_ttl_seconds)
        faiss.omp_set_num_threads(qcfg.threads)
        # The socket's hard cap is twice the request limit: a request between the two gets a
        # too_large error reply, only a grossly oversized one is dropped by zmq unanswered.
        self.router = protocol.configure(self.ctx.socket(zmq.ROUTER), hwm=lim.socket_hwm,
                                         max_message_bytes=2 * self.max_request_bytes())
        self.auth = keys.secure_server(self.cfg, self.ctx, self.router) if keys.needs_keys(self.cfg) else None
        self.router.bind(self.cfg.endpoint("query"))
        self.sub = protocol.configure(self.ctx.socket(zmq.SUB), hwm=lim.socket_hwm, max_message_bytes=protocol.EVENT_BYTES)
        self.sub.setsockopt(zmq.SUBSCRIBE, protocol.TOPIC_GENERATION)
        self.sub.setsockopt(zmq.RECONNECT_IVL_MAX, EVENTS_RECONNECT_MAX_MS)  # doubling from 100 ms
        self.sub.connect(self.cfg.endpoint("events"))
        self.poller = zmq.Poller()
        self.poller.register(self.router, zmq.POLLIN)
        self.poller.register(self.sub, zmq.POLLIN)
        self.watch_wakers(self.poller)  # a command or a stop signal ends a wait at once
        if self.model.remote:
            self.embeds = QueryEmbeds(self.model, timeout_seconds=qcfg.embed_timeout_seconds,
                                      max_waiting=qcfg.embed_max_waiting)
            self.poller.register(self.embeds.fileno(), zmq.POLLIN)  # its wake pipe: an embedding is done
        self.known = self.db().visibility()
        self.last_query = self.last_follow = self.last_trim = time.monotonic()
        self.close_db()  # start as deep asleep as after a sleep: nothing held until asked
        self.state = QState.ASLEEP

    @property
    def searcher(self) -> Searcher | None:
        return self.view.searcher  # None while asleep: nothing mapped

    @property
    def known_rows(self) -> int:
        return self.known.rows

    def db(self) -> Store:
        """The SQLite connection, opened on demand (closed in deep sleep: its page cache goes too)."""
        if self.store is None:
            self.store = Store.open(self.cfg)
        return self.store

    def close_db(self) -> None:
        self.model_checked = False
        if self.store is not None:
            self.store.close()
            self.store = None

    def max_request_bytes(self) -> int:
        return self.cfg.limits.max_message_bytes

    # --- main loop ---------------------------------------------------------------
    def poll_timeout(self) -> float:
        if self.state is QState.AWAKE and self.view.fields_pending():
            return 0.0  # read the next slice of row fields unless a request is waiting
        longest = super().poll_timeout()
        return longest if self.embeds is None else self.embeds.poll_timeout(longest)

    def loop(self, now: float) -> None:
        events = dict(self.poller.poll(int(self.poll_timeout() * 1000)))
        if self.sub in events:
            self._drain_events()
        # Bounded in count and in time: at 1M rows a search takes ~30 ms, and a queue of
        # requests must not keep the heartbeat from going out (the supervisor would take
        # a busy server for a hung one and kill it).
        budget = time.monotonic() + self.cfg.supervisor.heartbeat_seconds / 2
        if self.router in events:
            for i in range(MAX_REQUESTS_PER_STEP):
                # Asking is cheaper than a failed recv (an exception) on every request; the
                # poll has just said the first one is there.
                if i and (not self.router.get(zmq.EVENTS) & zmq.POLLIN or time.monotonic() >= budget):
                    break
                try:
                    frames = self.router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self.handle(frames, time.monotonic())
        if self.embeds is not None:
            if self.embeds.fileno() in events:  # a poller gives a plain descriptor back as an int
                self.embeds.drain()
            while time.monotonic() < budget and (ready := self.embeds.pop_ready()) is not None:
                self.answer_parked(*ready)
        now = time.monotonic()
        if self.state is QState.AWAKE:
            if self.view.fields_pending() and not self.router.get(zmq.EVENTS) & zmq.POLLIN:
                self.view.extend(self.db(), FIELDS_STEP_ROWS)
            if now - self.last_follow >= self.cfg.query.follow_poll_seconds:
                self.known = self.db().visibility()
                self.last_follow = now
                if self.searcher is not None and self.searcher.ann_changed():
                    self.reload()
            if now - self.last_query >= self.cfg.query.idle_seconds and not (self.embeds and self.embeds.parked):
                self.sleep()
            elif now - self.last_trim >= self.cfg.query.trim_seconds:
                memory.release()  # a long-awake server must not creep upward
                self.last_trim = now

    def _drain_events(self) -> None:
        while True:
            try:
                event = protocol.parse_generation_event(self.sub.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            except ProtocolError:
                continue
            if event.rows < self.known.rows and self.state is QState.AWAKE:
                # A compaction (a new epoch), or an event older than our last read of the
                # store: only the store tells which. Asleep, events come in order.
                self.known = self.db().visibility()
            else:
                self.known = self.known._replace(rows=event.rows)
            if self.searcher is not None and self.searcher.ann_changed():
                self.reload()  # a new approximate index (it comes with an event)

    # --- requests ----------------------------------------------------------------
    def handle(self, frames: list[bytes], now: float) -> None:
        if len(frames) == 4 and self.state is QState.AWAKE:
            try:
                out = self.fast_query(frames, now)
            except Exception as exc:  # noqa: BLE001 (SQLite busy, say: answered, or refused, the general way)
                log.debug("fast path gave up: %r", exc)
                out = None
            if out is not None:
                self._send(out)
                return
        self.steps.start()
        self.envelope, self.parked_now = protocol.split_envelope(frames)[0], False
        answered = protocol.answer(frames, lambda msg, extra: self.dispatch(msg, extra, now),
                                   max_bytes=self.max_request_bytes(), on_internal=self._internal)
        if answered is None:
            self.dropped += 1  # nothing to answer: no request frame at all
            return
        if self.parked_now:
            return  # answered by answer_parked, when its embedding is done or late
        out, ok = answered
        if not ok:
            self._count_error(protocol.unpack_map(out[-1], max_bytes=len(out[-1])).get("code"))
        self._send(out)
        self.steps.mark("reply")
        self.steps.finish()

    def fast_query(self, frames: list[bytes], now: float) -> list[bytes] | None:
        """The reply frames of a plain vector query, when its answer needs nothing but what
        the server already holds; None for anything else, which handle() then answers the
        general way (every error reply included).

        Plain: a float32 or float16 vector naming no option, from a client whose envelope
        is its identity and the empty delimiter, to a server awake. What it needs: nothing
        committed since the view's last read of the store (the mark `RowView.read` compares),
        and every row found in the row fields, of a live document. The search is the
        Searcher's own, hidden rows and all; documents are looked up as Store.field_hits
        does; the reply is byte for byte op_query's (tests/unit/test_query_fast.py compares
        the two, for every scoring, dtype, shape, k and with_text). Nothing is changed
        before the answer is known, so giving up halfway (None, or an exception) is safe.

        Why a second path: after a 100k-row scan every step of a query runs on flushed
        CPU caches, and the general path's many small steps cost a vector query 0.3-0.4 ms
        over a bare ZeroMQ server doing the same scan (issue 21); this is that query in
        one function, touching as little as it can."""
        identity, delimiter, body, data = frames
        opts, view, store = self.vector_options, self.view, self.store
        if (delimiter or len(body) > FAST_REQUEST_BYTES or opts is None or not self.model_checked
                or store is None or view.fields is None or view.searcher is None or opts.mode == LEXICAL):
            return None
        try:
            msg = msgpack.unpackb(body, raw=False, strict_map_key=True)
        except Exception:  # noqa: BLE001 (the general path tells the client what was wrong)
            return None
        if type(msg) is not dict or not FAST_FIELDS.issuperset(msg) or msg.get("op") != "query":
            return None
        qcfg = self.cfg.query
        v, k, with_text = msg.get("v"), msg.get("k", qcfg.default_k), msg.get("with_text", True)
        if type(v) is not int or v != protocol.VERSION or type(k) is not int or not 1 <= k <= qcfg.max_k:
            return None
        dim, name, shape = self.model.dim, msg.get("dtype"), msg.get("shape")
        if (with_text is not True and with_text is not False) or type(shape) is not list or shape[-1:] != [dim]:
            return None
        if not (len(shape) == 1 or (len(shape) == 2 and shape[0] == 1 and type(shape[0]) is int)) or type(shape[-1]) is not int:
            return None
        if name == "float32" and len(data) == 4 * dim and LITTLE_ENDIAN:
            # Finite: no float32 is inf or NaN exactly when their sum (in double, which
            # cannot overflow for 384 or even 10**6 of them) is not; np.isfinite took
            # 0.04 ms here on cold caches
            if not math.isfinite(sum(memoryview(data).cast("f"))):
                return None
            vector = np.ndarray((1, dim), np.float32, data)
        elif name == "float16" and len(data) == 2 * dim:
            vector = np.frombuffer(data, dtype="<f2").reshape(1, dim)
            if not np.isfinite(vector).all():
                return None
            vector = vector.astype(np.float32)
        else:
            return None
        if not view.watch.unchanged(store, view.version):
            return None  # something was committed: the general path reads the store again
        started = time.perf_counter()
        key = self._key(None, vector, opts, k, with_text)
        hits = self.cache.get(key)
        if hits is None:
            hits = self._fast_hits(vector, opts, k, with_text)
            if hits is None:
                return None
            self.cache.put(key, hits)
        self.beat_soon |= now - self.last_query >= self.cfg.embedder.yield_seconds
        self.last_query = now
        self.known = view.vis
        self.served += 1
        self.fast_served += 1
        self.durations[opts.mode].observe(time.perf_counter() - started)
        return [identity, delimiter, self.packer.pack(
            {"v": protocol.VERSION, "id": msg.get("id"), "ok": True, "hits": hits, "rows": view.searcher.rows,
             "mode": opts.mode, "coverage": view.coverage, "generation": view.generation,
             "took_ms": round((time.perf_counter() - started) * 1000, 3)})]

    def _fast_hits(self, vector: np.ndarray, opts: hybrid.Options, k: int, with_text: bool) -> list[dict] | None:
        """fast_query's hit maps (hybrid.search's for a vector alone), or None when a row is
        not one the row fields know or not of a live document (the general path then
        answers, as it does every such case, for a reason it logs)."""
        view, store = self.view, self.store
        scores, rows = view.searcher.search(vector, max(k, opts.candidates) if opts.mode == HYBRID else k)
        score = hybrid.dense_scorer(scores, opts)
        rows, scores = rows[:k].tolist(), scores[:k].tolist()
        fields, live = view.fields, view.live
        records, built, size, unpack = fields.records, fields.built, RECORD.size, RECORD.unpack_from
        found = []
        for row in rows:
            if not 0 <= row < built or not (rec := unpack(records, row * size))[0]:
                return None  # rows beyond the fields, or no chunk's: the general path looks them up in SQLite
            found.append(rec)
        docs = store.know_documents([rec[1] for rec in found], live)  # as Store.field_hits does
        texts = store._texts([rec[0] for rec in found]) if with_text else None
        headings = fields.headings
        hits = []
        for rank, (row, dense, (chunk_id, doc_id, position, page, heading)) in enumerate(zip(rows, scores, found), 1):
            if not live.get(doc_id) or (doc := docs.get(doc_id)) is None:
                return None  # a version not live (the hidden rows were stale): the general path drops and logs it
            key, version, title, source = doc
            item = {"rank": rank, "score": score(rank, dense), "row": row,
                    "chunk_id": chunk_id, "doc_id": doc_id, "key": key, "version": version, "position": position,
                    "title": title, "source": source, "page": None if page < 0 else page,
                    "heading": headings[heading], "dense_rank": rank, "lexical_rank": None, "embedded": True}
            if texts is not None:
                if (text := texts.get(chunk_id)) is None:
                    return None
                item["text"] = text
            hits.append(item)
        return hits

    def answer_parked(self, parked: Parked, vector: np.ndarray | None, error: BaseException | None) -> None:
        """Reply to a parked text query: search with its vector, or tell its error."""
        try:
            if error is not None:
                raise error
            self.last_query = time.monotonic()
            self.wake()  # it may have slept meanwhile (`roxi sleep`): a query wakes it
            text, opts = parked.context
            reply = protocol.ok(parked.request_id, **self.answer(text, vector, opts, parked.k, parked.with_text,
                                                                 parked.started))
        except RoxiError as exc:
            reply = protocol.error(parked.request_id, exc.code, str(exc))
        except Exception as exc:  # as protocol.answer does: a bug, logged, never a crash
            self._internal(exc)
            reply = protocol.error(parked.request_id, E_INTERNAL, f"internal error: {exc}")
        if not reply["ok"]:
            self._count_error(reply["code"])
        self._send(parked.envelope + [protocol.pack(reply)])

    def _count_error(self, code: Any) -> None:
        self.errors += 1
        self.error_codes[code if isinstance(code, str) else "unknown"] += 1

    def _send(self, frames: list[bytes]) -> None:
        try:
            self.router.send_multipart(frames, zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError):
            self.dropped += 1  # client gone or not reading: never block the server on it

    def dispatch(self, msg: dict, extra: list[bytes], now: float) -> dict:
        op = msg.get("op")
        handler = self.OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            raise ProtocolError(protocol.E_UNKNOWN_OP, f"unknown op {op!r} (known: {', '.join(self.OPS)})")
        return handler(self, msg, extra, now)

    def _internal(self, exc: BaseException) -> None:
        log.error("request failed", exc_info=exc)

    def op_query(self, msg: dict, extra: list[bytes], now: float) -> dict:
        k = msg.get("k", self.cfg.query.default_k)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= self.cfg.query.max_k:
            raise BadInput(f"k must be an integer in [1, {self.cfg.query.max_k}], got {k!r}")
        with_text = msg.get("with_text", True)
        if not isinstance(with_text, bool):
            raise BadInput("with_text must be true or false")
        text, vector = self._parse_query(msg, extra)  # a bad request wakes nothing
        opts = self._options(msg, text, vector)
        if text is not None:
            self.steps.mode = opts.mode
        started = time.perf_counter()
        pending = None
        if (vector is None and opts.mode != LEXICAL and self.embeds is None
                and not self.cache.holds(self._key(text, None, opts, k, with_text))):
            # The model first: it computes (in its process) while the rest is done, the
            # commit mark and, after a commit, a whole snapshot included. Not when the cache
            # may answer: a vector nobody reads would make the next text query wait for it.
            # A miss now is a miss in the snapshot too (nothing is cached in between).
            pending = self._start(text)
        # The first query after a quiet spell is told to the supervisor at once, which tells
        # the embedders to leave a core free (issue 21): not up to a heartbeat later.
        self.beat_soon |= now - self.last_query >= self.cfg.embedder.yield_seconds
        self.last_query = now
        self.wake()
        if vector is None and opts.mode != LEXICAL and self.embeds is not None:
            vector = self.embeds.cached(text)
            if vector is None:  # embedded off the loop; answered by answer_parked
                self.embeds.park(text, envelope=self.envelope, request_id=msg.get("id"), k=k,
                                 with_text=with_text, started=started, context=(text, opts))
                self.parked_now = True
                return {}
        return self.answer(text, vector, opts, k, with_text, started, pending=pending)

    @staticmethod
    def _key(text: str | None, vector: np.ndarray | None, opts: hybrid.Options, k: int, with_text: bool) -> tuple:
        """A query's key in the result cache."""
        return (text, None if vector is None else vector.tobytes(), opts.key, k, with_text)

    def answer(self, text: str | None, vector: np.ndarray | None, opts: hybrid.Options, k: int,
               with_text: bool, started: float, *, pending: Callable[[], np.ndarray] | None = None) -> dict:
        """The reply fields of a query, as of one read snapshot of the store (the hits from
        the cache when it has them for that snapshot's visibility). A text query's vector is
        computed only on a cache miss, by the model process while the lexical leg runs;
        `pending` waits for one op_query already started."""
        key = self._key(text, vector, opts, k, with_text)

        def read() -> list[dict]:
            hits = self.cache.get(key)
            if hits is None:
                if vector is not None or opts.mode == LEXICAL:
                    wait = lambda: vector  # noqa: E731
                else:
                    wait = pending or self._start(text)
                hits = self.search(opts, k, with_text=with_text, vector=wait)
                self.cache.put(key, hits)
            return hits

        hits = self.in_snapshot(read)
        self.served += 1
        self.durations[opts.mode].observe(time.perf_counter() - started)
        view = self.view  # its coverage and generation were read with its state (RowView.read)
        return {"hits": hits, "rows": view.mapped_rows, "mode": opts.mode, "coverage": view.coverage,
                "generation": view.generation, "took_ms": round((time.perf_counter() - started) * 1000, 3)}

    def search(self, opts: hybrid.Options, k: int, *, with_text: bool,
               vector: Callable[[], np.ndarray | None]) -> list[dict]:
        """Hits of the mapped rows and the stored words; call inside the snapshot the view
        was synced to."""
        store = self.db()
        if opts.mode == LEXICAL:
            self.steps.mark("prepare")  # no model to start (_start marks it)
        hits, stale = hybrid.search(self.searcher, store, opts, k, with_text=with_text, vector=vector,
                                    lookup=lambda rows, text: self.view.hits(store, rows, with_text=text),
                                    mark=self.steps.mark)
        self.stale_dropped += stale
        return hits

    def _start(self, text: str) -> Callable[[], np.ndarray]:
        """Start embedding a query text; the returned function waits for its vector."""
        finish = self.model.encode_later([text])
        self.steps.mark("prepare")
        return lambda: np.ascontiguousarray(finish(), dtype=np.float32)

    def in_snapshot(self, read: Callable[[], T]) -> T:
        """`read()` inside one read snapshot of the store, once the mapping, the hidden rows
        and the result cache (invalidated before any lookup) are brought up to it."""
        self.known, out = self.view.read(self.db(), read, on_change=self.cache.invalidate)
        return out

    def _parse_query(self, msg: dict, extra: list[bytes]) -> tuple[str | None, np.ndarray | None]:
        """Validate a query: its text, its float32 vector of shape (1, d), or both (the
        vector then feeds the dense leg, the text the lexical one)."""
        text = msg.get("text")
        if text is not None:
            if not isinstance(text, str):
                raise BadInput("text must be a string")
            if not text.strip():
                raise BadInput("query text is empty")
            if len(text) > self.cfg.query.max_query_chars:
                raise ProtocolError(protocol.E_TOO_LARGE, f"query text of {len(text)} characters exceeds "
                                    f"query.max_query_chars ({self.cfg.query.max_query_chars})")
        vec = None
        if "dtype" in msg or extra:
            if len(extra) != 1:
                raise BadInput("a vector query needs exactly one vector frame after the request map")
            vec = protocol.decode_array(msg, extra[0], dim=self._check_model(), max_rows=1)
            if vec.shape[0] != 1:
                raise BadInput("a vector query carries exactly one vector")
            if vec.dtype != np.float32:  # float16 on the wire (frombuffer's arrays are contiguous)
                vec = vec.astype(np.float32)
        elif text is None:
            raise BadInput("query needs 'text' or a vector frame with 'dtype' and 'shape'")
        else:
            self._check_model()
        return text, vec

    def _options(self, msg: dict, text: str | None, vector: np.ndarray | None) -> hybrid.Options:
        """hybrid.options; those of a vector alone with no option of its own made once."""
        if text is not None or not msg.keys().isdisjoint(hybrid.OPTION_FIELDS):
            return hybrid.options(msg, self.cfg, text=text, has_vector=vector is not None)
        if self.vector_options is None:
            self.vector_options = hybrid.options({}, self.cfg, text=None, has_vector=True)
        return self.vector_options

    def _check_model(self) -> int:
        if self.model_checked:
            return self.model.dim
        recorded = self.db().model()
        if recorded is not None and recorded != (self.model.model_id, self.model.dim):
            raise ModelMismatch(f"store was built with model {recorded[0]!r} (dim {recorded[1]}); "
                                f"this query server embeds with {self.model.model_id!r} (dim {self.model.dim})")
        # A store's model changes only by `reembed` or `restore`, both with the system
        # stopped; until the connection closes (deep sleep) the answer stands.
        self.model_checked = recorded is not None
        return self.model.dim

    def op_stats(self, msg: dict, extra: list[bytes], now: float) -> dict:
        return self.stats()

    def op_ping(self, msg: dict, extra: list[bytes], now: float) -> dict:
        return {"pong": True}

    def op_sleep(self, msg: dict, extra: list[bytes], now: float) -> dict:
        self.sleep()
        return self.stats()

    def op_wake(self, msg: dict, extra: list[bytes], now: float) -> dict:
        self.last_query = now
        self.wake()
        return self.stats()

    OPS = {"query": op_query, "stats": op_stats, "ping": op_ping, "sleep": op_sleep, "wake": op_wake}

    # --- sleep and wake ----------------------------------------------------------
    def wake(self) -> None:
        """After sleep (on the first query or `wake`): map the committed rows, hide the
        rows of dead and pending versions. A query syncs them again in its own snapshot."""
        if self.state is QState.ASLEEP:
            self.model.load()
            self.last_follow = self.last_trim = time.monotonic()
            self.state = QState.AWAKE
            self.in_snapshot(lambda: None)
            log.info("awake: %d rows", self.known.rows)

    def reload(self) -> None:
        """Map everything afresh (a new approximate index was installed)."""
        self.view.drop()  # unmap the old index before mapping the new one
        self.cache.invalidate()
        if self.state is QState.AWAKE:
            self.in_snapshot(lambda: None)

    def sleep(self) -> None:
        """Deep sleep: drop every reference to the mapping and every cache, give memory back."""
        was_awake = self.state is QState.AWAKE
        # Asleep, only a request that wakes nothing (a bad vector query) may have opened
        # the store since: a sleep then has nothing to give back (and the pages of the
        # libraries, ~7 ms to let go of, were let go of by the sleep before).
        held = was_awake or self.store is not None or self.model.loaded or self.searcher is not None
        self.view.drop()  # the mappings and the hidden rows
        self.cache.invalidate()
        self.steps.clear()
        self.model.unload()
        if self.embeds is not None:
            self.embeds.release()  # idle workers exit; parked queries are still answered
        self.close_db()
        self.state = QState.ASLEEP
        if held:
            memory.release(file_pages=True)  # the libraries' code too: faiss, numpy, OpenBLAS
        if was_awake:
            self.sleeps += 1
            log.info("deep sleep")

    def command(self, msg: dict, now: float) -> None:
        op = msg.get("op")
        if op == "sleep":
            self.sleep()
        elif op == "wake":
            self.last_query = now  # a prewarm counts as use: do not fall asleep at once
            self.wake()

    def stats(self) -> dict:
        return {"state": self.state.value, "rows": self.view.mapped_rows, "known_rows": self.known.rows,
                "epoch": self.known.epoch, "visibility_seq": self.known.seq, "hidden_rows": 0,
                "stale_dropped": self.stale_dropped,
                "served": self.served, "fast_served": self.fast_served, "errors": self.errors, "dropped": self.dropped,
                "sleeps": self.sleeps, "cache_entries": len(self.cache), "cache_hits": self.cache.hits,
                "model_loaded": self.model.loaded, "text_steps_ms": self.steps.p50_ms(),
                "metrics": {"query_seconds": {m: h.as_dict() for m, h in self.durations.items()},
                            "errors": dict(self.error_codes)},
                **(self.embeds.info() if self.embeds is not None else {}),
                **(self.searcher.info() if self.searcher is not None
                   else {"index": self.cfg.indexer.index, "ann_rows": 0})}

    def state_name(self) -> str:
        if self.state is QState.STARTING:
            return "starting"
        return "asleep" if self.state is QState.ASLEEP else "running"

    def info(self) -> dict:
        if (state := self.state_name()) == "starting":
            return {"state": state}
        return {**self.stats(), "state": state}

    def shutdown(self) -> None:
        self.view.drop()
        if self.embeds is not None:
            for parked in self.embeds.close():  # a client waiting for one hears why now
                self.answer_parked(parked, None, UpstreamUnavailable("the query server is stopping"))
        if self.model is not None:
            self.model.unload()  # ends the model process, if there is one
        for sock in (self.router, self.sub):
            if sock is not None:
                sock.close(0)
        if self.auth is not None:
            self.auth.stop()
        self.close_db()


def main(argv: list[str] | None = None) -> int:
    return run(QueryServer, argv)


if __name__ == "__main__":
    raise SystemExit(main())
