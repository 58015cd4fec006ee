"""HTTP backend: embeddings from an OpenAI-compatible `POST <base_url>/embeddings` API.

Production deployments pay for every request, so this backend is built never to lose or
fake a chunk's work and never to exceed the API's rate limits. Every attempt first waits
on a shared `RateLimiter` (requests and estimated tokens per minute); a 429 pauses every
worker for the server's Retry-After; 5xx replies, timeouts, dropped connections and
malformed replies are retried with capped, fully jittered exponential backoff; a reply is
validated strictly (count, indices, dimension, finite numbers) and a bad one is an error,
never data. Inputs the API refuses (400/413/422) raise `EmbedError(input_error=True)` at
once so the embedder role can split the batch; a refused key (401/403) fails at once.
Requests are sized to the service (`adaptive.AdaptiveSizer`): `encode` sends the texts it
is given in requests of the current batch size, one after another, each holding one of
the `concurrency` slots shared by every caller (`adaptive.Gate`); a request that times out
above the smallest size is sent again smaller without counting as a failed attempt, so a
slow service is slowed down to, not mistaken for a dead one.
The API key is read from the environment at `load` and scrubbed from every message this
module produces, since servers may echo it back. `encode` is safe for `max_in_flight`
concurrent callers: they share one pooled httpx.Client and one limiter.

This module is the policy: options, the connection pool, retries and pauses, counters.
One request and the checks on its reply are `http_request.post`, which keeps no state;
the checks on the options are `http_request.check_options`; the sizing is `adaptive`.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from typing import Callable

import httpx
import numpy as np

from .. import ratelimit
from ..errors import ConfigError
from .adaptive import AdaptiveSizer, Gate, Ticket
from .base import EmbedError, Embedder, check_texts
from .http_request import (MAX_IN_FLIGHT, Refused, Retry, check_options, estimate_tokens, post, request_body,
                           retry_after_seconds)

# Imported from here by callers and tests, though they live in http_request.
__all__ = ["HttpEmbedder", "MAX_IN_FLIGHT", "estimate_tokens", "retry_after_seconds"]

log = logging.getLogger("roxi.embedder.http")

#: share of the configured rate limits actually used (0.98): request starts are spaced
#: exactly, but network jitter can bring their arrivals closer together at the server
RATE_HEADROOM = 0.98
#: seconds an idle pooled connection is kept open (5.0)
KEEPALIVE_SECONDS = 5.0
#: statuses that refuse the input itself: the role splits the batch to find the culprit
INPUT_STATUSES = frozenset({400, 413, 422})
#: statuses that refuse the key: retrying cannot help
AUTH_STATUSES = frozenset({401, 403})
#: text put in place of the API key wherever it would appear
REDACTED = "[REDACTED]"
#: timeouts in a row that one position of a call may answer by sending smaller requests
#: without using an attempt (20): enough to go from the largest batch and concurrency to
#: the smallest, yet a bound, should other callers keep growing them back
FREE_TIMEOUTS = 20
# status() counter of each kind of failed attempt
_COUNTER = {"rate_limited": "rate_limited", "server": "server_errors",
            "transport": "transport_errors", "bad_reply": "bad_replies"}


class _Smaller(Retry):
    """A request timed out above the smallest size: its texts go again in smaller requests,
    without counting a failed attempt."""


class _Conn:
    """An httpx.Client and the requests using it, so `unload` never cuts one off."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.users = 0
        self.retired = False


class HttpEmbedder(Embedder):
    """Embeddings from an OpenAI-compatible API; `model_id` is "http:<model>"."""
    remote = True  # the query server embeds query texts off its loop (roxi_mp.query_embed)

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        dim: int,
        api_key_env: str = "OPENAI_API_KEY",
        requests_per_minute: float = 3000,
        tokens_per_minute: float = 1_000_000,
        max_in_flight: int = 4,
        timeout_seconds: float = 30.0,
        max_retries: int = 6,
        backoff_initial_seconds: float = 1.0,
        backoff_max_seconds: float = 60.0,
        max_wait_seconds: float = 300.0,
        min_batch_size: int = 1,
        max_batch_size: int = 2048,
        initial_batch_size: int = 8,
        target_fraction: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        check_options(base_url=base_url, model=model, dim=dim, api_key_env=api_key_env,
                      max_in_flight=max_in_flight, max_retries=max_retries, positive={
                          "requests_per_minute": requests_per_minute,
                          "tokens_per_minute": tokens_per_minute, "timeout_seconds": timeout_seconds,
                          "backoff_initial_seconds": backoff_initial_seconds,
                          "backoff_max_seconds": backoff_max_seconds, "max_wait_seconds": max_wait_seconds})
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.dim = dim
        self.model_id = f"http:{model}"
        self.api_key_env = api_key_env
        self.max_in_flight = max_in_flight
        self.timeout_seconds = float(timeout_seconds)
        self.max_retries = max_retries
        self.backoff_initial_seconds = float(backoff_initial_seconds)
        self.backoff_max_seconds = float(backoff_max_seconds)
        self.max_wait_seconds = float(max_wait_seconds)
        self._url = f"{self.base_url}/embeddings"
        self._clock = clock
        self._sleep = sleep
        self._limiter = ratelimit.RateLimiter(
            requests_per_minute=requests_per_minute * RATE_HEADROOM,
            tokens_per_minute=tokens_per_minute * RATE_HEADROOM,
            clock=clock,
            sleep=sleep,
        )
        self._rng = random.Random()
        self._lock = threading.Lock()  # guards _conn, _secrets, the counters, _sizer
        self._sizer = AdaptiveSizer(min_batch=min_batch_size, max_batch=max_batch_size,
                                    initial_batch=initial_batch_size, max_concurrency=max_in_flight,
                                    timeout_seconds=self.timeout_seconds, target_fraction=target_fraction,
                                    max_pause=self.backoff_max_seconds, clock=clock)
        self._gate = Gate(self._sizer.concurrency)
        self._conn: _Conn | None = None
        # Every key ever loaded (a rotated key can still be echoed by a late reply); a tuple
        # replaced whole, so _redact can read it without the lock.
        self._secrets: tuple[str, ...] = ()
        self._auth_logged = False
        self._backoff_until = float("-inf")
        self._counts = {"requests": 0, "retries": 0, "rate_limited": 0, "server_errors": 0,
                        "bad_replies": 0, "transport_errors": 0, "timeouts": 0, "failures": 0, "embedded": 0}
        self._last_error: str | None = None

    # --- resources -----------------------------------------------------------------
    def load(self) -> None:
        with self._lock:
            if self._conn is None:
                self._conn = self._open()

    def unload(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            conn.retired = True
            close = conn.users == 0
        if close:
            conn.client.close()
        # else the last request still using it closes it (see _checkin)

    @property
    def loaded(self) -> bool:
        return self._conn is not None

    def _open(self) -> _Conn:
        # Stripped: a key file's trailing newline would make an illegal header, and the
        # error quoting it would escape the newline, so the redaction would not match.
        secret = os.environ.get(self.api_key_env, "").strip()
        if not all(33 <= ord(c) < 127 for c in secret):
            raise ConfigError(f"${self.api_key_env} holds characters an HTTP header cannot carry")
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "roxi-mp"}
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
            if secret not in self._secrets:
                self._secrets += (secret,)
        else:
            log.info("no API key in $%s: requests carry no Authorization header", self.api_key_env)
        self._auth_logged = False  # a new key deserves its own error line
        timeout = self.timeout_seconds
        client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(connect=timeout, read=timeout, write=timeout, pool=timeout),
            limits=httpx.Limits(max_connections=self.max_in_flight,
                                max_keepalive_connections=self.max_in_flight,
                                keepalive_expiry=KEEPALIVE_SECONDS),
            follow_redirects=False,  # a redirect means a wrong base_url: report it, resend nothing
        )
        return _Conn(client)

    def _checkout(self) -> _Conn:
        with self._lock:
            if self._conn is None:
                self._conn = self._open()
            self._conn.users += 1
            return self._conn

    def _checkin(self, conn: _Conn) -> None:
        with self._lock:
            conn.users -= 1
            close = conn.retired and conn.users == 0
        if close:
            conn.client.close()

    # --- encode --------------------------------------------------------------------
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # The API refuses an empty string (HTTP 400) and it has nothing to embed: its zero
        # row is the contract's answer, and it costs no request.
        todo = [i for i, text in enumerate(texts) if text]
        if todo:
            out[todo] = self._embed([texts[i] for i in todo])
        return out

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Vectors of non-empty `texts`, in requests of the current batch size, in turn."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        start, free = 0, FREE_TIMEOUTS
        while start < len(texts):
            n = min(self._sizer.batch, len(texts) - start)
            vectors = self._send(texts[start:start + n], may_shrink=free > 0)
            if vectors is None:  # timed out above the floor: the batch has shrunk, send smaller
                free -= 1
                continue
            out[start:start + n] = vectors
            start, free = start + n, FREE_TIMEOUTS
        return out

    def _send(self, texts: list[str], *, may_shrink: bool) -> np.ndarray | None:
        """One request of `texts` with its retries: the vectors, None when it timed out above
        the floor and should be sent smaller (no attempt used), or EmbedError."""
        body = request_body(self.model, texts)
        estimate = estimate_tokens(texts)
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            if attempt:
                self._count("retries")
            # The client is opened before the limiter's slot, not after: a lazy load
            # between the two would delay this request's arrival behind the next one's.
            conn = self._checkout()
            try:
                vectors, used = self._attempt(conn, body, len(texts), estimate, may_shrink=may_shrink)
            except EmbedError as exc:
                self._count("failures")
                self._set_error(str(exc))
                raise
            except Retry as exc:
                self._failed_attempt(exc)
                if isinstance(exc, _Smaller):
                    self._count("retries")
                    return None
                if attempt + 1 < attempts:
                    self._wait(exc, attempt, attempts)
                    continue
                self._count("failures")
                raise EmbedError(
                    f"embedding API failed after {attempts} attempts: last error {exc.message}"
                ) from None
            finally:
                self._checkin(conn)
            if used > estimate:
                self._limiter.charge(used - estimate)
            self._count("embedded", len(texts))
            return vectors
        raise AssertionError("unreachable")  # the loop returns or raises

    def _failed_attempt(self, exc: Retry) -> None:
        self._count(_COUNTER[exc.kind])
        if exc.kind == "bad_reply":
            self._count("server_errors")  # a malformed reply is the server's fault too
        if exc.timeout:
            self._count("timeouts")
        self._set_error(exc.message)

    def _attempt(self, conn: _Conn, body: bytes, n: int, estimate: int, *,
                 may_shrink: bool) -> tuple[np.ndarray, int]:
        """One POST in one of the `concurrency` slots: the vectors and the tokens the reply
        says were used; _Smaller when it timed out and may be sent smaller; Retry; EmbedError."""
        # A holder leaves within one limiter wait and one request, and waiters go in turn:
        # this bound is only a guard against a bug, never a wait a working service causes.
        patience = self.max_in_flight * (self.max_wait_seconds + self.timeout_seconds)
        if not self._gate.acquire(patience):
            raise EmbedError(f"no request slot came free within {patience:g} s")
        try:
            self._limiter.acquire(estimate, timeout=self.max_wait_seconds)
            with self._lock:
                ticket = self._sizer.send(n)
            self._count("requests")
            try:
                vectors, used = post(conn.client, self._url, body, n=n, dim=self.dim,
                                     timeout_seconds=self.timeout_seconds, clock=self._clock, redact=self._redact)
            except Refused as exc:
                raise self._refusal(exc.status, exc.message) from None
            except Retry as exc:
                if exc.timeout:
                    self._timed_out(ticket, exc, may_shrink=may_shrink)
                raise
        finally:
            self._gate.release()
        with self._lock:
            changes = self._sizer.replied(ticket)
            self._gate.set_limit(self._sizer.concurrency)
        self._log_changes(changes)
        return vectors, used

    def _timed_out(self, ticket: Ticket, exc: Retry, *, may_shrink: bool) -> None:
        """Tell the sizer and pause every caller while the service finishes the abandoned
        request; raise _Smaller when its texts may go again in smaller requests for free,
        else return (the timeout is a failed attempt)."""
        with self._lock:
            verdict = self._sizer.timed_out(ticket)
            # Under the lock: two threads must not set the gate in the wrong order.
            self._gate.set_limit(self._sizer.concurrency)
        if verdict.pause:
            self._limiter.pause_until(self._clock() + verdict.pause)
        free = verdict.free and may_shrink
        pause = f"; nothing is sent for {verdict.pause:.1f} s while the service finishes it" if verdict.pause else ""
        if free or pause:
            log.warning("a request of %d texts timed out (%s)%s%s", ticket.n, exc.message,
                        ": sending them again in smaller requests" if free else "", pause)
        self._log_changes(verdict.changes)
        if free:
            raise _Smaller("transport", exc.message, timeout=True) from None

    @staticmethod
    def _log_changes(changes: list[str]) -> None:
        for change in changes:
            log.info("%s", change)

    def _refusal(self, status: int, message: str) -> EmbedError:
        """The error for a status retrying cannot change (_embed counts and records it)."""
        if status in INPUT_STATUSES:
            return EmbedError(f"embedding API refused the input (HTTP {status}): {message}", input_error=True)
        if status in AUTH_STATUSES:
            error = f"embedding API refused the key from ${self.api_key_env} (HTTP {status}): {message}"
            with self._lock:
                first, self._auth_logged = not self._auth_logged, True
            if first:
                log.error("%s", error)
        else:
            error = f"embedding API answered HTTP {status} (is base_url right?): {message}"
            log.error("%s", error)
        return EmbedError(error)

    def _wait(self, exc: Retry, attempt: int, attempts: int) -> None:
        if exc.kind == "rate_limited":
            if exc.retry_after is None:
                delay = self._backoff(attempt)
            else:
                delay = min(exc.retry_after, self.backoff_max_seconds)
            # Every worker pauses, not just this one: the limit is the account's.
            self._limiter.pause_until(self._clock() + delay)
            log.warning("rate limited (429), pausing %.2f s (attempt %d/%d)", delay, attempt + 1, attempts)
            return  # the next acquire() waits the pause out
        delay = self._backoff(attempt)
        with self._lock:
            self._backoff_until = max(self._backoff_until, self._clock() + delay)
        log.warning("embedding request failed (%s), retrying in %.2f s (attempt %d/%d)",
                    exc.message, delay, attempt + 1, attempts)
        self._sleep(delay)

    def _backoff(self, attempt: int) -> float:
        # Full jitter: workers that failed together do not all come back together.
        cap = min(self.backoff_max_seconds, self.backoff_initial_seconds * 2.0 ** min(attempt, 64))
        return self._rng.uniform(0.0, cap)

    # --- messages and figures --------------------------------------------------------
    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _set_error(self, message: str) -> None:
        with self._lock:
            self._last_error = self._redact(message)

    def status(self) -> dict:
        """Counters since construction: `requests` sent, `retries`, `rate_limited` (429s),
        `server_errors` (5xx and malformed replies), `bad_replies` (malformed alone),
        `transport_errors` (timeouts, connection failures), `timeouts` (replies not in time),
        `failures` (EmbedErrors raised), `embedded` texts; `backoff_seconds` of pause or
        backoff left; `last_error`; and the sizing now: `batch_size` (texts per request),
        `concurrency` (requests at once), `seconds_per_text` (smoothed latency, None before
        the first reply), `texts_per_second` (over the last minute)."""
        now = self._clock()
        with self._lock:
            backoff = max(0.0, self._backoff_until - now, self._limiter.paused_until - now)
            return {**self._counts, "backoff_seconds": round(backoff, 3), "last_error": self._last_error,
                    **self._sizer.status()}
