"""The commit protocol, in one place: vector rows become durable before chunks are marked.

    1. append the float16 rows past the end of the vectors file (header untouched)
    2. fsync the vectors file: the rows are durable
    3. one SQLite transaction: each chunk's row, state `indexed`, committed_rows, generation
    4. patch the file header so readers see the new rows

A crash before 3 leaves rows past committed_rows, which VectorWriter.recover() truncates on
the next start; the chunks were never marked, so they are embedded again. A crash after 3
loses nothing (recover() rewrites the header from SQLite). The indexer commits through
this function, and so does `roxi reembed`; nothing else writes vectors.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import StoreError
from .store import Store
from .vectors import VectorWriter


def commit(store: Store, writer: VectorWriter, chunk_ids: Sequence[int], matrix: np.ndarray, *,
           reused: int = 0) -> int:
    """Commit rows for chunks that have none yet; returns the new generation. `reused` of
    them are vectors copied from an identical chunk's row (counted in the store's meta)."""
    start = store.committed_rows()
    try:
        first = writer.append(matrix)  # a full disk may fail it halfway
        if first != start:
            raise StoreError(f"vectors file has {first} rows, the store committed {start}")
        writer.sync()
        rows = first + len(chunk_ids)
        generation = store.commit_rows(list(zip(chunk_ids, range(first, rows))), rows=rows, reused=reused)
    except Exception:
        writer.recover(store.committed_rows())  # take back what the failed commit appended
        raise
    writer.publish(rows)
    return generation
