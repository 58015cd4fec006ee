"""The contract every embedder backend fulfils: texts in, unit-length float32 rows out.

Roles only talk to `Embedder`, so a backend can be swapped by configuration. `model_id`
is written into the store next to the vectors; the store refuses to mix vectors of two
ids, so a backend must change its id whenever the same text would map to another vector.
`load`/`unload` let an idle embedder role give model memory back to the OS and reload
on demand; backends without heavy resources keep the no-op defaults.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..errors import E_EMBED_FAILED, BadInput, RoxiError

if TYPE_CHECKING:  # only the annotations name it: EmbedError alone must not load numpy
    import numpy as np


class EmbedError(RoxiError):
    """A backend could not embed a batch (after its own retries, where it has any).

    `input_error` says the texts themselves were refused (an HTTP 400/413/422, say): the
    embedder role then splits the batch to find the culprit instead of failing its
    neighbours. Otherwise the failure is the service's (down, overloaded, malformed answer)
    and the whole batch is given back to be tried again later.
    """

    code = E_EMBED_FAILED

    def __init__(self, message: str, *, input_error: bool = False) -> None:
        super().__init__(message)
        self.input_error = input_error


class Embedder(abc.ABC):
    """encode(texts) -> float32 (n, dim), rows L2-normalised.

    `encode` may be called from a worker thread, and from up to `max_in_flight` threads at
    once (an API-bound backend wants several requests in flight); it must be thread-safe
    for that many callers. It raises EmbedError when a batch cannot be embedded.
    """

    #: concurrent encode() calls the embedder role may make
    max_in_flight: int = 1
    #: encode() waits on a network service: the query server then embeds query texts off
    #: its loop, with a deadline (roxi_mp.query_embed); local models run inline, faster
    remote: bool = False
    #: encode() computes on this machine's CPU (not a service's): the embedder role may run
    #: one batch per core while nobody queries, and narrows the model to one call at a time
    #: with `set_parallel` when queries come (issue 21)
    local_compute: bool = False

    #: stable id recorded in the store, e.g. "hashing-v1-1024"
    model_id: str
    #: length of every vector, in float32 components
    dim: int

    @abc.abstractmethod
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of `texts` as float32 (len(texts), dim); rows have norm 1, or 0 when a
        text has nothing to embed. An empty sequence gives shape (0, dim)."""

    def encode_later(self, texts: Sequence[str]) -> Callable[[], np.ndarray]:
        """Start embedding `texts`; the returned function gives the vectors (as `encode`).
        The caller may work meanwhile: a model in another process computes then (the query
        server's ModelProcess); by default the vectors are computed at once."""
        vectors = self.encode(texts)
        return lambda: vectors

    def set_parallel(self, calls: int) -> None:
        """From now on at most `calls` model calls compute at once, across all encode()
        callers (a local model checks it before each call; no-op by default)."""

    def load(self) -> None:
        """Load model resources (no-op by default)."""

    def unload(self) -> None:
        """Drop model resources so memory returns to the OS (no-op by default)."""

    @property
    def loaded(self) -> bool:
        """Whether `encode` can run without loading first."""
        return True

    def status(self) -> dict:
        """Backend figures for status (e.g. the current backoff); empty by default."""
        return {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model_id}>"


def check_texts(texts: Sequence[str]) -> Sequence[str]:
    """`texts` if it is a sequence of str, else BadInput.

    A bare str is a sequence of characters; accepting it would silently embed each letter.
    """
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise BadInput(f"texts must be a sequence of str, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise BadInput(f"texts[{i}] must be a str, got {type(text).__name__}")
    return texts
