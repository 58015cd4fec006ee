"""Embedder backends and the factory that picks one by its configured name.

Roles build their embedder through `make_embedder`, so the backend is a configuration
value; an unknown name fails at boot with a ConfigError rather than at the first batch.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Embedder
from .hashing import HashingEmbedder

__all__ = ["Embedder", "HashingEmbedder", "make_embedder", "BACKENDS"]

#: names accepted by `make_embedder`
BACKENDS = ("hashing",)


def make_embedder(backend: str, *, dim: int) -> Embedder:
    """A new embedder of `backend` producing `dim`-long vectors."""
    if backend == "hashing":
        return HashingEmbedder(dim=dim)
    raise ConfigError(f"unknown embedder backend {backend!r}; known: {', '.join(BACKENDS)}")
