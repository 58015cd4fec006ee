"""The contract every embedder backend fulfils: texts in, unit-length float32 rows out.

Roles only talk to `Embedder`, so a backend can be swapped by configuration. `model_id`
is written into the store next to the vectors; the store refuses to mix vectors of two
ids, so a backend must change its id whenever the same text would map to another vector.
`load`/`unload` let an idle embedder role give model memory back to the OS and reload
on demand; backends without heavy resources keep the no-op defaults.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

from ..errors import BadInput


class Embedder(abc.ABC):
    """encode(texts) -> float32 (n, dim), rows L2-normalised."""

    #: stable id recorded in the store, e.g. "hashing-v1-1024"
    model_id: str
    #: length of every vector, in float32 components
    dim: int

    @abc.abstractmethod
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of `texts` as float32 (len(texts), dim); rows have norm 1, or 0 when a
        text has nothing to embed. An empty sequence gives shape (0, dim)."""

    def load(self) -> None:
        """Load model resources (no-op by default)."""

    def unload(self) -> None:
        """Drop model resources so memory returns to the OS (no-op by default)."""

    @property
    def loaded(self) -> bool:
        """Whether `encode` can run without loading first."""
        return True

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
