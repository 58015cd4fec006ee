"""One request to an OpenAI-compatible `POST <base_url>/embeddings`, and what its reply means.

`post()` sends one JSON body on a pooled httpx.Client, reads the reply within a byte limit
and a deadline, and returns validated, unit-length vectors with the tokens the reply says
were used, or says why not: `Retry` for a failure worth another attempt (429, 5xx, 408/409,
timeouts, dropped connections, malformed replies), `Refused` for a status that retrying
cannot change (the input, the key, the URL). What to do about either (back off, pause
every worker, split the batch, log) is the caller's policy, in `http.py`. Nothing here
keeps state: a reply is judged on its own, and a bad one is never data. `check_options`
refuses options no request could be made with, at construction.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Sequence
from typing import Callable

import httpx
import numpy as np

from ..errors import ConfigError

#: characters per token assumed by the estimate (4); a real tokenizer may count more,
#: which the reply's `usage` then charges to the limiter afterwards
CHARS_PER_TOKEN = 4
#: bytes read of an error reply, at most (65_536); the rest is not needed for a message
MAX_ERROR_BYTES = 65_536
#: reply bytes allowed per vector component (40) and per input (512), plus a fixed 64 KiB:
#: a larger reply cannot be valid, and reading it would only cost memory
REPLY_BYTES_PER_FLOAT = 40
REPLY_BYTES_PER_INPUT = 512
REPLY_BYTES_FIXED = 65_536
#: characters of a server's error message kept (200)
MAX_SERVER_MESSAGE = 200
#: most concurrent requests per embedder accepted (64)
MAX_IN_FLIGHT = 64
#: statuses retried like 5xx (request timeout, conflict), as the OpenAI clients do
RETRY_STATUSES = frozenset({408, 409})

Redact = Callable[[str], str]


class Retry(Exception):
    """A failed attempt worth retrying; `kind` picks the wait and the counter ("rate_limited",
    "server", "transport" or "bad_reply"), `message` is for people, `retry_after` is the
    seconds a 429 asked for (None when it did not say). `timeout` says the reply did not
    come in time (the read or the whole reply), which a smaller request may fix; a connect
    timeout is not one: no server has the request yet."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None, *,
                 timeout: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after
        self.timeout = timeout


class Refused(Exception):
    """A status retrying cannot change (4xx other than 408/409/429); `message` is the
    server's own, redacted and shortened."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def request_body(model: str, texts: Sequence[str]) -> bytes:
    # ASCII JSON: lone surrogates (from bad decodes) become \u escapes the server can
    # refuse with a 400, instead of failing to encode here on every retry.
    return json.dumps({"model": model, "input": list(texts), "encoding_format": "float"}).encode("ascii")


def estimate_tokens(texts: Sequence[str]) -> int:
    """An estimate of the tokens `texts` cost: len // 4 + 1 each. Only an estimate (text
    in other scripts can cost more); the limiter is charged the real usage afterwards."""
    return sum(len(t) // CHARS_PER_TOKEN + 1 for t in texts)


def retry_after_seconds(headers: httpx.Headers, *, wall_now: float | None = None) -> float | None:
    """Seconds a 429's headers ask to wait (`retry-after-ms`, or `Retry-After` as seconds
    or an HTTP date), None when absent or unreadable."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
            if math.isfinite(value):
                return max(0.0, value)
        except ValueError:
            value = None  # not a number: try the standard header
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
        return max(0.0, value) if math.isfinite(value) else None
    except ValueError:
        value = None  # not seconds: an HTTP date, below
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None  # an HTTP date is always GMT; a naive one is not one
    return max(0.0, when.timestamp() - (time.time() if wall_now is None else wall_now))


def post(client: httpx.Client, url: str, body: bytes, *, n: int, dim: int, timeout_seconds: float,
         clock: Callable[[], float], redact: Redact) -> tuple[np.ndarray, int]:
    """One POST of `body` (n inputs): (n x dim unit float32 rows, tokens used), or Retry /
    Refused. `clock` bounds the whole reply by `timeout_seconds`; `redact` scrubs secrets
    from every message that could quote them."""
    deadline = clock() + timeout_seconds
    try:
        with client.stream("POST", url, content=body) as reply:
            status, headers = reply.status_code, reply.headers
            if 200 <= status < 300:
                limit = REPLY_BYTES_FIXED + n * (dim * REPLY_BYTES_PER_FLOAT + REPLY_BYTES_PER_INPUT)
                raw = _read(reply, limit, deadline, clock, timeout_seconds, truncate=False)
            else:
                raw = _read(reply, MAX_ERROR_BYTES, deadline, clock, timeout_seconds, truncate=True)
    except httpx.TimeoutException as exc:
        slow = isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout))
        raise Retry("transport", f"{type(exc).__name__} after {timeout_seconds:g} s", timeout=slow) from None
    except httpx.RequestError as exc:
        raise Retry("transport", redact(f"{type(exc).__name__}: {exc}")) from None
    if 200 <= status < 300:
        return parse_reply(raw, n, dim)
    message = server_message(raw, redact)
    if status == 429:
        raise Retry("rate_limited", f"HTTP 429: {message}", retry_after_seconds(headers))
    if status >= 500 or status in RETRY_STATUSES:
        raise Retry("server", f"HTTP {status}: {message}")
    raise Refused(status, message)


def _read(reply: httpx.Response, limit: int, deadline: float, clock: Callable[[], float],
          timeout_seconds: float, *, truncate: bool) -> bytes:
    # httpx's read timeout bounds each read, not the whole body: a server trickling
    # bytes is cut off here, so one attempt never outlives timeout_seconds by much.
    buf = bytearray()
    for chunk in reply.iter_bytes():
        buf += chunk
        if len(buf) > limit:
            if truncate:
                return bytes(buf[:limit])
            raise Retry("bad_reply", f"reply larger than {limit} bytes")
        if clock() > deadline:
            raise Retry("transport", f"reply not complete after {timeout_seconds:g} s", timeout=True)
    return bytes(buf)


def parse_reply(raw: bytes, n: int, dim: int) -> tuple[np.ndarray, int]:
    """A 2xx body checked strictly (count, indices, dimension, finite JSON numbers):
    (n x dim unit float32 rows in input order, tokens used), else Retry("bad_reply")."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Retry("bad_reply", "reply is not JSON") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        raise Retry("bad_reply", "reply has no data list")
    if len(data) != n:
        raise Retry("bad_reply", f"reply has {len(data)} embeddings for {n} inputs")
    out = np.empty((n, dim), dtype=np.float64)
    seen = [False] * n
    for item in data:
        index = item.get("index") if isinstance(item, dict) else None
        if type(index) is not int or not 0 <= index < n:
            raise Retry("bad_reply", f"reply has an invalid index {index!r}")
        if seen[index]:
            raise Retry("bad_reply", f"reply repeats index {index}")
        seen[index] = True
        vector = item.get("embedding")
        if not isinstance(vector, list) or len(vector) != dim:
            got = len(vector) if isinstance(vector, list) else type(vector).__name__
            raise Retry("bad_reply", f"reply embedding {index} has dimension {got}, expected {dim}")
        # bool is an int and numpy would parse numeric strings: only JSON numbers pass.
        if not all(type(x) is float or type(x) is int for x in vector):
            raise Retry("bad_reply", f"reply embedding {index} holds a non-number")
        try:
            out[index] = vector
        except OverflowError:  # an integer beyond float64
            raise Retry("bad_reply", f"reply embedding {index} holds a huge number") from None
    if not np.isfinite(out).all():
        raise Retry("bad_reply", "reply holds NaN or infinite numbers")
    # Scale by the largest component first, so that squares of huge values cannot
    # overflow the norm; an all-zero row stays zero, as the contract allows.
    peak = np.abs(out).max(axis=1, keepdims=True)
    np.divide(out, peak, out=out, where=peak > 0)
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))[:, None]
    np.divide(out, norms, out=out, where=norms > 0)
    return out.astype(np.float32), usage_tokens(doc.get("usage"))


def server_message(raw: bytes, redact: Redact) -> str:
    """The message of an error body (OpenAI's `error.message`, or the text itself), redacted,
    on one line and at most MAX_SERVER_MESSAGE characters."""
    text = raw.decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        error = doc.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            text = error["message"]
        elif isinstance(error, str):
            text = error
        elif isinstance(doc.get("message"), str):
            text = doc["message"]
    # Redact before truncating: a cut key would no longer match.
    text = " ".join(redact(text).split())
    return text[:MAX_SERVER_MESSAGE] or "(no message)"


def usage_tokens(usage: object) -> int:
    """Tokens a reply's `usage` reports, 0 when it reports none."""
    if isinstance(usage, dict):
        for key in ("total_tokens", "prompt_tokens"):
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
    return 0


def check_options(*, base_url: object, model: object, dim: object, api_key_env: object,
                  max_in_flight: object, max_retries: object, positive: dict[str, object]) -> None:
    """ConfigError unless HttpEmbedder's options are usable; `positive` maps the names of
    the rates and durations to their values. (The batch sizes are AdaptiveSizer's to check.)"""
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"http base_url must start with http:// or https://, got {base_url!r}")
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"http model must be a non-empty string, got {model!r}")
    if not _is_int(dim) or dim < 1:
        raise ConfigError(f"http dim must be an integer >= 1, got {dim!r}")
    if not isinstance(api_key_env, str) or not api_key_env:
        raise ConfigError(f"http api_key_env must be a non-empty string, got {api_key_env!r}")
    if not _is_int(max_in_flight) or not 1 <= max_in_flight <= MAX_IN_FLIGHT:
        raise ConfigError(
            f"http max_in_flight must be an integer from 1 to {MAX_IN_FLIGHT}, got {max_in_flight!r}"
        )
    if not _is_int(max_retries) or max_retries < 0:
        raise ConfigError(f"http max_retries must be an integer >= 0, got {max_retries!r}")
    for name, value in positive.items():
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"http {name} must be a finite number > 0, got {value!r}")
    if positive["backoff_max_seconds"] < positive["backoff_initial_seconds"]:
        raise ConfigError("http backoff_max_seconds must be >= backoff_initial_seconds")
    if positive["max_wait_seconds"] < positive["backoff_max_seconds"]:
        # A capped Retry-After pause could then never be waited out.
        raise ConfigError("http max_wait_seconds must be >= backoff_max_seconds")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
