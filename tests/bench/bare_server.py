"""The least a ZeroMQ search server can do: the floor `bench_query` and `bench_ann` hold ours against.

    python -m tests.bench.bare_server [--text] VECTORS_FILE ROWS ENDPOINT [CONFIG DATA_DIR]

A ROUTER socket; each request is one float32 vector frame; the same faiss search as the
query server, one thread, k 10: the vectors file mapped by roxi_mp.vectors.open_index, or,
given a configuration (its TOML file and data directory), the query server's own
roxi_mp.search.Searcher over that store (its approximate index and efSearch included). The
reply is the row numbers as raw bytes. No msgpack, no validation, no hit metadata: what is
left between it and in-process faiss is ZeroMQ and the process boundary on this machine.
An empty frame stops it.

With `--text` (and a configuration) each request is a query text in UTF-8 instead, embedded
in this process by the configured MiniLM model (its compute, one thread) before the search:
the floor for a text query (`bench_text_query`), with the model in the server and nothing
else.
"""

from __future__ import annotations

import sys
from typing import Callable

import faiss
import numpy as np
import zmq

from roxi_mp import config as config_mod
from roxi_mp.search import Searcher
from roxi_mp.vectors import open_index

K = 10


def searcher(argv: list[str]) -> Callable[[np.ndarray], np.ndarray]:
    """search(query of shape (1, d)) -> the best K rows."""
    path, rows = argv[0], int(argv[1])
    if len(argv) > 3:
        cfg = config_mod.load(argv[3], data_dir=argv[4], env={})
        ours = Searcher(cfg, rows=rows, vectors_path=path)
        return lambda q: ours.search(q, K)[1]
    index = open_index(path, rows=rows)
    return lambda q: index.search(q, K)[1][0]


def text_model(argv: list[str]) -> Callable[[bytes], np.ndarray]:
    """embed(UTF-8 text) -> its vector, shape (1, d): the configured MiniLM in this process."""
    from roxi_mp.embedders import minilm_compute
    from roxi_mp.embedders.minilm import MiniLMEmbedder

    cfg = config_mod.load(argv[3], data_dir=argv[4], env={})
    model = MiniLMEmbedder(compute=minilm_compute(cfg))
    model.load()
    return lambda body: np.ascontiguousarray(model.encode([body.decode()]), dtype=np.float32)


def main(argv: list[str]) -> int:
    text = argv[:1] == ["--text"]
    argv = argv[1:] if text else argv
    endpoint = argv[2]
    faiss.omp_set_num_threads(1)
    search = searcher(argv)
    embed = text_model(argv) if text else lambda body: np.frombuffer(body, dtype=np.float32)[None, :]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(endpoint)
    try:
        while True:
            if not sock.poll(10_000):
                return 1  # the benchmark went away
            ident, empty, body = sock.recv_multipart()
            if not body:
                sock.send_multipart([ident, empty, b""])
                return 0
            found = search(embed(body))
            sock.send_multipart([ident, empty, found.tobytes()])
    finally:
        sock.close(0)
        ctx.term()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
