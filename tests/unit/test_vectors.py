"""Tests of the vectors file: layout pinned against faiss, commit protocol, readers."""

from __future__ import annotations

import gc
import struct
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from roxi_mp.errors import BadInput, ModelMismatch, StoreError
from roxi_mp.vectors import (
    FORMAT_VERSION,
    HEADER_BYTES,
    MAGIC,
    VectorWriter,
    model_tag,
    open_index,
    preload,
    read_header,
)

DIM = 8
MODEL = "test/model-a"


def unit_rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def faiss_sq(x: np.ndarray | None = None) -> faiss.IndexScalarQuantizer:
    index = faiss.IndexScalarQuantizer(DIM, faiss.ScalarQuantizer.QT_fp16,
                                       faiss.METRIC_INNER_PRODUCT)
    if x is not None:
        index.add(x)
    return index


def write_published(path: Path, *batches: np.ndarray) -> None:
    with VectorWriter(path, dim=DIM, model_id=MODEL) as w:
        for batch in batches:
            w.append(batch)
        w.sync()
        w.publish(w.rows)


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize("n", [0, 3])
def test_layout_is_faiss_except_dummy_fields(tmp_path: Path, n: int) -> None:
    x = unit_rows(n, seed=1)
    ref = tmp_path / "faiss.idx"
    faiss.write_index(faiss_sq(x if n else None), str(ref))
    ours = tmp_path / "ours.vec"
    write_published(ours, x)
    a, b = ref.read_bytes(), ours.read_bytes()
    assert len(a) == len(b) == HEADER_BYTES + n * 2 * DIM
    assert a[:16] == b[:16] and a[32:] == b[32:]
    assert b[HEADER_BYTES:] == x.astype("<f2").tobytes()
    assert b[16:24] == MAGIC
    assert struct.unpack("<II", b[24:32]) == (FORMAT_VERSION, model_tag(MODEL))


def test_faiss_reads_our_file_with_its_own_mmap(tmp_path: Path) -> None:
    path = tmp_path / "v.vec"
    write_published(path, unit_rows(5, seed=2))
    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    assert index.ntotal == 5


def test_round_trip_matches_in_memory_faiss(tmp_path: Path) -> None:
    path = tmp_path / "v.vec"
    a, b = unit_rows(40, seed=3), unit_rows(25, seed=4).astype(np.float64)
    write_published(path, a, b)
    header = read_header(path)
    assert (header.dim, header.rows, header.codes_bytes) == (DIM, 65, 65 * 2 * DIM)
    assert header.model_tag == model_tag(MODEL)
    index = open_index(path)
    assert index.ntotal == 65
    reference = faiss_sq(np.vstack([a, b.astype(np.float32)]))
    queries = unit_rows(6, seed=5)
    d_ours, i_ours = index.search(queries, 10)
    d_ref, i_ref = reference.search(queries, 10)
    np.testing.assert_array_equal(i_ours, i_ref)
    np.testing.assert_allclose(d_ours, d_ref, atol=1e-3)


def test_append_without_publish_is_invisible(tmp_path: Path) -> None:
    path = tmp_path / "v.vec"
    write_published(path, unit_rows(4, seed=6))
    with VectorWriter(path, dim=DIM, model_id=MODEL) as w:
        assert w.append(unit_rows(3, seed=7)) == 4
        w.sync()
        assert w.rows == 7
        assert read_header(path).rows == 4
        assert open_index(path).ntotal == 4
        w.publish(7)
        assert open_index(path).ntotal == 7


def test_recover_drops_unpublished_rows(tmp_path: Path) -> None:
    path = tmp_path / "v.vec"
    write_published(path, unit_rows(4, seed=8))
    with VectorWriter(path, dim=DIM, model_id=MODEL) as w:
        w.append(unit_rows(3, seed=9))  # a commit that crashed before SQLite committed
    with VectorWriter(path, dim=DIM, model_id=MODEL) as w:
        assert w.rows == 7
        assert w.recover(4) == 3
        assert w.rows == 4
    assert path.stat().st_size == HEADER_BYTES + 4 * 2 * DIM
    assert read_header(path).rows == 4


def test_recover_publishes_committed_but_unpublished_rows(tmp_path: Path) -> None:
    path = tmp_path / "v.vec"
    with VectorWriter(path, dim=DIM, model_id=MODEL) as w:
        w.append(unit_rows(5, seed=10))
        w.sync()  # crashed after SQLite committed, before publish
    with VectorWriter(path, dim=DIM, model_id=MODEL) as w:
        assert w.recover(5) == 0
    assert open_index(path).ntotal == 5


def test_recover_refuses_lost_rows(tmp_path: Path) -> None:
    path = tmp_path / "v.vec"
    write_published(path, unit_rows(4, seed=11))
    with VectorWriter(path, dim=DIM, model_id=MODEL) as w:
        with pytest.raises(StoreError, match="4 rows.*committed 6"):
            w.recover(6)
    assert path.stat().st_size == HEADER_BYTES + 4 * 2 * DIM


def test_reopen_with_other_dim_or_model(tmp_path: Path) -> None:
    path = tmp_path / "v.vec"
    write_published(path, unit_rows(2, seed=12))
    with pytest.raises(ModelMismatch, match=r"8-dim.*16-dim"):
        VectorWriter(path, dim=16, model_id=MODEL)
    with pytest.raises(ModelMismatch) as info:
        VectorWriter(path, dim=DIM, model_id="other/model")
    message = str(info.value)
    assert f"{model_tag(MODEL):#010x}" in message and f"{model_tag('other/model'):#010x}" in message


@pytest.mark.parametrize("corruption", ["magic", "truncated", "qtype", "empty"])
def test_corrupt_header_is_a_store_error(tmp_path: Path, corruption: str) -> None:
    path = tmp_path / "v.vec"
    write_published(path, unit_rows(3, seed=13))
    if corruption == "magic":
        patch(path, 16, b"NOTROXI!")
    elif corruption == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif corruption == "qtype":
        patch(path, 37, struct.pack("<i", faiss.ScalarQuantizer.QT_8bit))
    else:
        path.write_bytes(b"")
    for read in (read_header, open_index):
        with pytest.raises(StoreError, match=str(path)):
            read(path)


def test_open_index_clamps_to_callers_rows(tmp_path: Path) -> None:
    path = tmp_path / "v.vec"
    write_published(path, unit_rows(10, seed=14))
    index = open_index(path, rows=6)
    assert index.ntotal == 6
    _, ids = index.search(unit_rows(3, seed=15), 10)
    assert ids.max() == 5
    assert open_index(path, rows=99).ntotal == 10


def test_open_index_clamps_torn_header_to_codes(tmp_path: Path) -> None:
    path = tmp_path / "v.vec"
    write_published(path, unit_rows(10, seed=16))
    patch(path, 8, struct.pack("<q", 12))  # ntotal written, codes length not yet
    assert open_index(path).ntotal == 10
    patch(path, 8, struct.pack("<q", 7))  # the other tear: codes length ahead of ntotal
    assert open_index(path).ntotal == 7


def test_open_index_clamps_to_file_size(tmp_path: Path) -> None:
    path = tmp_path / "v.vec"
    write_published(path, unit_rows(10, seed=17))
    with open(path, "r+b") as f:
        f.truncate(HEADER_BYTES + 6 * 2 * DIM + 5)
    assert open_index(path).ntotal == 6


def test_bad_input(tmp_path: Path) -> None:
    with VectorWriter(tmp_path / "v.vec", dim=DIM, model_id=MODEL) as w:
        with pytest.raises(BadInput):
            w.append(np.zeros((2, DIM + 1), np.float32))
        with pytest.raises(BadInput):
            w.append(np.zeros(DIM, np.float32))
        nan = unit_rows(2, seed=18)
        nan[1, 3] = np.nan
        with pytest.raises(BadInput):
            w.append(nan)
        with pytest.raises(BadInput):
            w.append(np.full((1, DIM), 1e6))  # inf once stored as float16
        assert w.rows == 0
        with pytest.raises(StoreError):
            w.publish(1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc/self/maps")
def test_index_unmaps_when_dropped(tmp_path: Path) -> None:
    path = tmp_path / "v.vec"
    write_published(path, unit_rows(3, seed=19))

    def mapped() -> bool:
        return str(path) in Path("/proc/self/maps").read_text()

    index = open_index(path)
    assert mapped()
    del index
    gc.collect()
    assert not mapped()


def test_preload_reads_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "v.vec"
    write_published(path, unit_rows(100, seed=20))
    assert preload(path, chunk_bytes=512) == path.stat().st_size


@pytest.mark.parametrize("start", [0, 1, 255, 256, 257, 511, 600])
def test_open_index_from_a_start_row_is_the_tail(tmp_path: Path, start: int) -> None:
    # Row sizes of 16 bytes put row boundaries at, on and across page boundaries.
    x = unit_rows(600, seed=5)
    path = tmp_path / "v.faiss"
    write_published(path, x)
    tail = open_index(path, rows=600, start=start)
    assert tail.ntotal == 600 - start
    if start < 600:
        want = x[start:].astype(np.float16).astype(np.float32)
        assert np.array_equal(tail.reconstruct_n(0, tail.ntotal), want)
        _, rows = tail.search(x[start:start + 1], 1)
        assert rows[0, 0] == 0
    # The private header write never reaches the file or another reader.
    assert np.array_equal(open_index(path).reconstruct_n(0, 600), x.astype(np.float16).astype(np.float32))


def test_open_index_start_past_the_rows_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "v.faiss"
    write_published(path, unit_rows(10, seed=6))
    assert open_index(path, start=10).ntotal == 0
    assert open_index(path, rows=4, start=8).ntotal == 0
    assert open_index(path, start=100_000).ntotal == 0
    with pytest.raises(BadInput):
        open_index(path, start=-1)
