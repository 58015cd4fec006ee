"""The transport floor of this machine: a request/reply echo, no work at all (issue 21, 4).

    .venv/bin/python -m tests.bench.bench_echo [--round-trips 5000] [--bytes 200]

A second process echoes each message back; this one times the round trips. Three ways:
pyzmq REQ/REP over ipc:// and over tcp:// (what every query pays: a ZeroMQ message crosses
an I/O thread at each end), and a plain Unix socket pair (what the kernel alone costs).
Acceptance 4 of issue 21 asks for a query, transport included, within 2x faiss's search in
the calling process: where the echo alone is near the search's own time, no ZeroMQ server
can meet it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import socket
import time

import zmq

from ..conftest import free_port
from .bench_ann import percentile
from .common import machine, table, temp_root, write_results

#: round trips not timed first: connections, allocations
WARMUP = 100


def _zmq_echo(endpoint: str, count: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.bind(endpoint)
    for _ in range(count):
        if not sock.poll(10_000):
            break  # the timing side went away: never wait forever
        sock.send(sock.recv())
    sock.close(0)
    ctx.term()


def _unix_echo(sock: socket.socket, size: int, count: int) -> None:
    sock.settimeout(10)
    for _ in range(count):
        got = b""
        while len(got) < size:
            chunk = sock.recv(size - len(got))
            if not chunk:
                return
            got += chunk
        sock.sendall(got)


def zmq_round_trips(endpoint: str, size: int, count: int) -> list[float]:
    server = multiprocessing.Process(target=_zmq_echo, args=(endpoint, count + WARMUP), daemon=True)
    server.start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.connect(endpoint)
    payload, times = b"x" * size, []
    try:
        for _ in range(count + WARMUP):
            t = time.perf_counter()
            sock.send(payload)
            if not sock.poll(10_000):
                raise RuntimeError(f"no echo from {endpoint} within 10 s")
            sock.recv()
            times.append(time.perf_counter() - t)
    finally:
        sock.close(0)
        ctx.term()
        server.join(10)
    return times[WARMUP:]


def unix_round_trips(size: int, count: int) -> list[float]:
    ours, theirs = socket.socketpair()
    server = multiprocessing.Process(target=_unix_echo, args=(theirs, size, count + WARMUP), daemon=True)
    server.start()
    ours.settimeout(10)
    payload, times = b"x" * size, []
    try:
        for _ in range(count + WARMUP):
            t = time.perf_counter()
            ours.sendall(payload)
            got = 0
            while got < size:
                got += len(ours.recv(size - got))
            times.append(time.perf_counter() - t)
    finally:
        ours.close()
        server.join(10)
    return times[WARMUP:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=5000)
    parser.add_argument("--bytes", type=int, default=200)
    args = parser.parse_args(argv)
    root = temp_root("echo")
    try:
        runs = {
            "pyzmq REQ/REP, ipc://": zmq_round_trips(f"ipc://{root / 'echo.sock'}", args.bytes, args.round_trips),
            "pyzmq REQ/REP, tcp://127.0.0.1": zmq_round_trips(f"tcp://127.0.0.1:{free_port()}", args.bytes,
                                                              args.round_trips),
            "Unix socket pair": unix_round_trips(args.bytes, args.round_trips),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows, data = [], {"machine": machine(), "bytes": args.bytes, "round_trips": args.round_trips, "ways": {}}
    for way, times in runs.items():
        p50, p99 = percentile(times, 50) * 1000, percentile(times, 99) * 1000
        data["ways"][way] = {"p50_ms": p50, "p99_ms": p99}
        rows.append([way, f"{p50:.3f}", f"{p99:.3f}"])
    markdown = (f"## Echo round trips, {args.bytes} bytes, {args.round_trips} each\n\n"
                + table(["way", "p50 ms", "p99 ms"], rows))
    print(markdown)
    print(f"written: {write_results('echo', data, markdown)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
