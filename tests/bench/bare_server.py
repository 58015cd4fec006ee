"""The least a ZeroMQ search server can do: the floor `bench_query` holds ours against.

    python -m tests.bench.bare_server VECTORS_FILE ROWS ENDPOINT

A ROUTER socket; each request is one float32 vector frame; the same faiss search as the
query server (the vectors file mapped by roxi_mp.vectors.open_index, one thread, k 10); the
reply is the row numbers as raw bytes. No msgpack, no validation, no hit metadata: what is
left between it and in-process faiss is ZeroMQ and the process boundary on this machine.
An empty frame stops it.
"""

from __future__ import annotations

import sys

import faiss
import numpy as np
import zmq

from roxi_mp.vectors import open_index


def main(argv: list[str]) -> int:
    path, rows, endpoint = argv[0], int(argv[1]), argv[2]
    faiss.omp_set_num_threads(1)
    index = open_index(path, rows=rows)
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
            _, found = index.search(np.frombuffer(body, dtype=np.float32)[None, :], 10)
            sock.send_multipart([ident, empty, found.tobytes()])
    finally:
        sock.close(0)
        ctx.term()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
