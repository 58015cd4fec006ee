"""Compaction: a new vectors file of the live rows, switched to in one SQLite transaction.

Deleted and replaced documents leave their rows in the append-only vectors file as
tombstones (hidden inside the search). Compaction gives that space back in three steps:

1. The child (`python -m roxi_mp.compact --epoch E+1`, started by the indexer through
   roxi_mp.compact_schedule) takes one read snapshot: R = committed rows, L = the sorted
   rows held by chunks not dropped (live and pending versions). It writes
   `vectors.<E+1>.faiss` (Config.vectors_file) with rows L in order, streamed, fsyncs it,
   then the sidecar `compact.<E+1>.rows.npy` (L) and last `compact.<E+1>.json` (what it did):
   the JSON present means the rest is complete. The indexer keeps committing into the old
   file meanwhile; queries keep answering from it.
2. The indexer, the single writer, finishes between its commits (roxi_mp.compact_swap):
   it appends rows [R, R_now) committed since the snapshot, fsyncs, and in ONE transaction
   renumbers chunks.row (old L[i] -> i, old R+j -> len(L)+j), detaches the rows not copied,
   sets committed_rows and bumps vectors_epoch, visibility_seq and generation. That commit
   is the switch: before it the old store is whole, after it the new one.
3. Then it reopens its writer on the new file, deletes the old one, and gives SQLite space
   back in short steps (dropped chunks, dead documents, incremental vacuum, checkpoint).

A crash anywhere leaves the old store or the new one: SQLite's vectors_epoch names the
current file, and every start of the indexer deletes any other vectors file and sidecar
(`remove_strays`), so an unfinished compaction simply never happened.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import BOOT_ERROR, ConfigError, RoxiError, StoreError
from .staging import fsync_path
from .vectors import HEADER_BYTES, VectorWriter, read_header

if TYPE_CHECKING:  # numpy is imported where rows become arrays: the supervisor, which only
    import numpy as np  # asks is_vectors_file, never needs it (deep sleep floors, issue 22)

    from .config import Config
    from .store import Store

log = logging.getLogger("roxi.compact")

#: rows read and written per step by the child: bounded memory (12 MiB at 384 dims)
COPY_BLOCK_ROWS = 16_384
#: every vectors file of a data dir: vectors.faiss (epoch 0) and vectors.<epoch>.faiss
VECTORS_NAME = re.compile(r"^vectors(?:\.(\d+))?\.faiss$")
#: the child's outputs beside the vectors file: compact.<epoch>.rows.npy and .json
SIDECAR_NAME = re.compile(r"^compact\.\d+\.(?:rows\.npy|json)(?:\.tmp)?$")


@dataclass(frozen=True)
class Result:
    """What the child did (compact.<epoch>.json): rows [0, rows_before) were snapshotted,
    `kept` of them copied into the epoch's file."""

    epoch: int
    rows_before: int
    kept: int
    seconds: float


def rows_path(cfg: Config, epoch: int) -> Path:
    return cfg.data_dir / f"compact.{epoch}.rows.npy"


def result_path(cfg: Config, epoch: int) -> Path:
    return cfg.data_dir / f"compact.{epoch}.json"


def current_vectors(cfg: Config, store: Store) -> Path:
    """The vectors file SQLite names as current (Config.vectors_file of its epoch)."""
    return cfg.vectors_file(store.vectors_epoch())


def is_vectors_file(name: str) -> bool:
    return VECTORS_NAME.match(name) is not None


def remove_strays(cfg: Config, epoch: int) -> list[Path]:
    """Delete every vectors file but the current epoch's, and every compaction sidecar:
    what a compaction interrupted before (or after) its switch leaves. Returns them."""
    keep = cfg.vectors_file(epoch).name
    found = []
    for entry in cfg.data_dir.iterdir() if cfg.data_dir.is_dir() else ():
        if (is_vectors_file(entry.name) and entry.name != keep) or SIDECAR_NAME.match(entry.name):
            entry.unlink(missing_ok=True)
            found.append(entry)
    if found:
        fsync_path(cfg.data_dir)
    return found


def snapshot(store: Store) -> tuple[int, int, np.ndarray]:
    """(epoch, committed rows R, sorted rows below R held by chunks not dropped), read in
    one transaction."""
    import numpy as np
    with store.snapshot() as conn:
        epoch, rows = store.vectors_epoch(), store.committed_rows()
        cur = conn.execute("SELECT row FROM chunks WHERE row IS NOT NULL AND row < ? AND state != 'dropped' "
                           "ORDER BY row", (rows,))
        kept = np.fromiter((r[0] for r in cur), dtype=np.int64)
    return epoch, rows, kept


def write_rows(src: Path, dst: Path, rows: np.ndarray, *, dim: int, model_id: str) -> None:
    """A new vectors file `dst` holding rows `rows` of `src`, in order; fsynced and published."""
    dst.unlink(missing_ok=True)  # what a killed earlier attempt left
    code = 2 * dim
    with open(src, "rb") as f, VectorWriter(dst, dim=dim, model_id=model_id) as out:
        fd = f.fileno()
        for start in range(0, len(rows), COPY_BLOCK_ROWS):
            out.append(_read_block(fd, rows[start:start + COPY_BLOCK_ROWS], code).view("<f2").reshape(-1, dim))
        out.sync()
        out.publish(out.rows)
    fsync_path(dst.parent)


def _read_block(fd: int, rows: np.ndarray, code: int) -> np.ndarray:
    """The rows' bytes, reading each run of consecutive rows with one pread."""
    import numpy as np
    out = np.empty((len(rows), code), dtype=np.uint8)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for run in np.split(np.arange(len(rows)), breaks):
        if not len(run):
            continue
        first, n = int(rows[run[0]]), len(run)
        raw = os.pread(fd, n * code, HEADER_BYTES + first * code)
        if len(raw) != n * code:
            raise StoreError(f"short read of rows {first}..{first + n - 1} from the vectors file")
        out[run[0]:run[0] + n] = np.frombuffer(raw, dtype=np.uint8).reshape(n, code)
    return out


def _write_durably(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def run(cfg: Config, epoch: int) -> Result:
    """The child's work: snapshot, new vectors file, sidecar, result (written last)."""
    import numpy as np

    from .store import Store

    started = time.monotonic()
    with Store.open(cfg, migrate=False) as store:
        model = store.model()
        current, rows, kept = snapshot(store)
    if current + 1 != epoch:
        raise StoreError(f"asked to write epoch {epoch}, but the store is at epoch {current}")
    if model is None:
        raise StoreError("the store has no model yet: nothing to compact")
    src = cfg.vectors_file(current)
    if read_header(src).dim != model[1]:
        raise StoreError(f"{src}: dimension differs from the store's model")
    write_rows(src, cfg.vectors_file(epoch), kept, dim=model[1], model_id=model[0])
    _write_durably(rows_path(cfg, epoch), lambda f: np.save(f, kept, allow_pickle=False))
    result = Result(epoch, rows, len(kept), round(time.monotonic() - started, 3))
    _write_durably(result_path(cfg, epoch), lambda f: f.write(json.dumps(asdict(result)).encode()))
    log.info("compaction to epoch %d: kept %d of %d rows in %.3f s", epoch, len(kept), rows, result.seconds)
    return result


def read_result(cfg: Config, epoch: int) -> tuple[Result, np.ndarray]:
    """The child's result and sidecar for `epoch`; StoreError if either is missing or wrong."""
    import numpy as np
    try:
        raw = json.loads(result_path(cfg, epoch).read_text())
        result = Result(**raw)
        kept = np.load(rows_path(cfg, epoch), allow_pickle=False)
    except (OSError, ValueError, TypeError) as exc:
        raise StoreError(f"compaction to epoch {epoch} left no usable result ({exc})") from None
    if result.epoch != epoch or kept.ndim != 1 or len(kept) != result.kept:
        raise StoreError(f"compaction to epoch {epoch}: result and sidecar disagree")
    return result, kept.astype(np.int64, copy=False)


def main(argv: list[str] | None = None) -> int:
    """`python -m roxi_mp.compact --epoch N [--data-dir D] [--config C]`: write epoch N, exit."""
    from . import config as config_mod
    from .process import child_parser, die_with_parent
    from .roles.base import setup_logging

    parser = child_parser("roxi_mp.compact")
    parser.add_argument("--epoch", type=int, required=True)
    args = parser.parse_args(argv)
    die_with_parent()  # an indexer killed meanwhile takes its compaction with it
    os.nice(10)  # a background copy gives way to queries and embedding
    setup_logging("compact")
    try:
        cfg = config_mod.load(args.config, data_dir=args.data_dir)
        run(cfg, args.epoch)
    except ConfigError as exc:
        print(f"roxi: compaction: {exc}", file=sys.stderr)
        return BOOT_ERROR
    except (RoxiError, OSError) as exc:
        log.error("compaction failed: %s", exc)
        return getattr(exc, "exit_code", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
