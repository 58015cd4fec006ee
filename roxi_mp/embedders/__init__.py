"""Embedder backends and the factory that picks one by its configured name.

Roles build their embedder through `make_embedder`, so the backend is a configuration
value; an unknown name fails at boot with a ConfigError rather than at the first batch.
Backends are imported lazily: the hashing backend must not pay for onnxruntime, and the
indexer, which only needs a backend's id, loads no weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import BACKENDS
from ..errors import ConfigError
from .base import EmbedError, Embedder
from .hashing import HashingEmbedder

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["Embedder", "EmbedError", "HashingEmbedder", "make_embedder", "rate_share", "BACKENDS"]


def rate_share(cfg: "Config", role: str) -> float:
    """The part of the http rate limits one process of `role` may use: each process holds
    its own buckets, and the limits are the service's, for the whole system. The query
    server keeps `http.query_share`; the `embedder.count` embedders split the rest."""
    if role == "query":
        return cfg.http.query_share
    if role == "embedder":
        return (1.0 - cfg.http.query_share) / cfg.embedder.count
    raise ValueError(f"no rate share for role {role!r}")


def make_embedder(cfg: "Config", backend: str | None = None, *, fresh: bool = False,
                  share: float = 1.0) -> Embedder:
    """The embedder named by `backend` (default: embedder.backend), configured from cfg.

    Construction is cheap (no weights are loaded before `load()` or the first encode).
    MiniLM's `compute = "auto"` computes in int8 unless the store was built in float32
    (so an existing store keeps its vectors' model); `fresh` (a store about to be embedded
    anew: `roxi reembed`) ignores what the store recorded. An http embedder uses `share`
    of the configured rate limits (`rate_share`: several processes call one service).
    """
    name = backend or cfg.embedder.backend
    if name == "hashing":
        return HashingEmbedder(dim=cfg.hashing.dim)
    if name == "minilm":
        from .minilm import MiniLMEmbedder
        m = cfg.minilm
        return MiniLMEmbedder(max_tokens=m.max_tokens, batch_tokens=m.batch_tokens, threads=m.threads,
                              compute=minilm_compute(cfg, fresh=fresh))
    if name == "http":
        from .http import HttpEmbedder
        h = cfg.http
        return HttpEmbedder(base_url=h.base_url, model=h.model, dim=h.dim, api_key_env=h.api_key_env,
                            requests_per_minute=h.requests_per_minute * share,
                            tokens_per_minute=h.tokens_per_minute * share,
                            max_in_flight=h.max_in_flight, timeout_seconds=h.timeout_seconds,
                            max_retries=h.max_retries, backoff_initial_seconds=h.backoff_initial_seconds,
                            backoff_max_seconds=h.backoff_max_seconds, max_wait_seconds=h.max_wait_seconds,
                            # a request never carries more texts than the embedder role claims
                            min_batch_size=h.min_batch_size,
                            max_batch_size=min(h.max_batch_size, cfg.embedder.batch_size),
                            initial_batch_size=h.initial_batch_size, target_fraction=h.target_fraction)
    raise ConfigError(f"unknown embedder backend {name!r}; known: {', '.join(BACKENDS)}")


def minilm_compute(cfg: "Config", *, fresh: bool = False) -> str:
    """minilm.compute, with "auto" resolved: "float32" for a store built with the float32
    MiniLM, else "int8" (a new store, a fresh one, or one of another model, which the
    store then refuses by name as before)."""
    if cfg.minilm.compute != "auto":
        return cfg.minilm.compute
    from ..store import Store
    from .minilm import MODEL_ID as FLOAT32_ID
    if not fresh and Store.recorded_model(cfg.db_path) == FLOAT32_ID:
        return "float32"
    return "int8"
