"""The query server's embedding model, held in a child process that deep sleep ends.

A model runtime cannot give all its memory back: once onnxruntime and tokenizers are
imported and a session has run, ~37 MB stay in the process after unloading (measured),
which would keep a sleeping query server far above its floor. So for heavy backends the
query server embeds through `ModelProcess`, an Embedder whose model lives in
`python -m roxi_mp.model_process`: `load()` starts it, `unload()` ends it, and the process
exit returns every page. It answers `encode` on a ROUTER socket in the run directory
(same framing as the query protocol: texts in, a float32 matrix frame out), dies with its
parent (PR_SET_PDEATHSIG plus a parent-pid check), and every wait on it is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Callable, Sequence

import numpy as np
import zmq

from . import config as config_mod
from . import protocol
from .client import Client
from .embedders import EmbedError, make_embedder
from .embedders.base import Embedder, check_texts
from .errors import BOOT_ERROR, ConfigError, RoxiError, Timeout

#: seconds the child may take to load its model and answer its first ping
START_TIMEOUT = 60.0
#: seconds one encode request may take
ENCODE_TIMEOUT = 60.0


class ModelProcess(Embedder):
    """An Embedder whose model runs in a child process (see the module docstring)."""

    def __init__(self, cfg: config_mod.Config, *, ctx: zmq.Context | None = None) -> None:
        inner = make_embedder(cfg)  # cheap: only its id and dimension are used here
        self.model_id, self.dim = inner.model_id, inner.dim
        self.cfg = cfg
        self.ctx = ctx or zmq.Context.instance()
        self.proc: subprocess.Popen | None = None
        self.client: Client | None = None
        self.endpoint = cfg.endpoint(f"model-{os.getpid()}")

    @property
    def loaded(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def load(self) -> None:
        if self.loaded:
            return
        self.unload()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roxi_mp.model_process", *self.cfg.to_argv(), "--endpoint", self.endpoint],
            stdin=subprocess.DEVNULL, close_fds=True)
        self.client = Client(self.endpoint, timeout=ENCODE_TIMEOUT, ctx=self.ctx,
                             max_message_bytes=256 << 20)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            code = self.proc.poll()
            if code is not None:
                self.unload()
                raise ConfigError(f"the query model process exited with {code} while starting (see the query log)")
            try:
                self.client.call("ping", timeout=0.5)
                return
            except (Timeout, RoxiError):
                if time.monotonic() > deadline:
                    self.unload()
                    raise EmbedError(f"the query model process did not start within {START_TIMEOUT:g} s")

    def unload(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
            self.proc = None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode_later(texts)()

    def encode_later(self, texts: Sequence[str]) -> Callable[[], np.ndarray]:
        """Send `texts` to the model process now; the returned function waits for their
        vectors (bounded by ENCODE_TIMEOUT), so the caller works while the model computes."""
        texts = list(check_texts(texts))
        if not texts:
            return lambda: np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        try:
            sent = self.client.send("encode", texts=texts)
        except (Timeout, RoxiError) as exc:
            self.unload()  # a stuck or broken child is replaced on the next call
            raise EmbedError(f"query model process: {exc}") from None
        # The request leaves through zmq's I/O thread, woken on this core: a caller that
        # goes straight on computing (the lexical leg) kept it waiting for the scheduler,
        # and the model started late: 1.3-1.7 ms later at p50, measured with a SciFact query
        # and its lexical leg (5.9 ms alone, 7.6 overlapped). A sleep(0) lets it run first:
        # 6.2 ms overlapped (sched_yield: 6.9, a 0.1 ms sleep: 6.6).
        time.sleep(0)
        return lambda: self._receive(sent, len(texts))

    def _receive(self, sent: tuple, count: int) -> np.ndarray:
        try:
            if self.client is None:
                raise EmbedError("query model process: stopped before it answered")
            reply, frames = self.client.receive(sent)
        except (Timeout, RoxiError) as exc:
            self.unload()  # a stuck or broken child is replaced on the next call
            raise EmbedError(f"query model process: {exc}") from None
        if len(frames) != 1:
            raise EmbedError("query model process sent no vector frame")
        return np.array(protocol.decode_array(reply, frames[0], dim=self.dim, max_rows=count),
                        dtype=np.float32)


# --- the child -----------------------------------------------------------------------
def serve(cfg: config_mod.Config, endpoint: str, parent: int) -> int:
    model = make_embedder(cfg)
    model.load()
    ctx = zmq.Context()
    sock = protocol.configure(ctx.socket(zmq.ROUTER), hwm=100, max_message_bytes=64 << 20)
    sock.bind(endpoint)
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    vector_frame: list[memoryview] = []  # the reply's second frame, set by handle()

    def handle(msg: dict, extra: list[bytes]) -> dict:
        if msg.get("op") == "ping":
            return {"pong": True}
        if msg.get("op") != "encode":
            raise protocol.ProtocolError(protocol.E_UNKNOWN_OP, f"unknown op {msg.get('op')!r}")
        vectors = np.ascontiguousarray(model.encode(msg.get("texts") or []), dtype=np.float32)
        meta, buf = protocol.encode_array(vectors)
        vector_frame.append(buf)
        return meta

    try:
        while not stop["flag"] and os.getppid() == parent:
            if not sock.poll(1000, zmq.POLLIN):
                continue
            frames = sock.recv_multipart()
            vector_frame.clear()
            answered = protocol.answer(frames, handle, max_bytes=64 << 20)
            if answered is None:
                continue
            out, ok = answered
            if ok and vector_frame:
                out.append(vector_frame[0])
            sock.send_multipart(out, copy=False)
    finally:
        sock.close(0)
        ctx.term()
        if endpoint.startswith("ipc://"):
            with contextlib.suppress(OSError):  # already gone: nothing to tidy
                os.unlink(endpoint[len("ipc://"):])
    return 0


def main(argv: list[str] | None = None) -> int:
    from .process import child_parser, die_with_parent

    parser = child_parser("roxi_mp.model_process")
    parser.add_argument("--endpoint", required=True)
    args = parser.parse_args(argv)
    parent = os.getppid()
    die_with_parent()
    try:
        cfg = config_mod.load(args.config, data_dir=args.data_dir)
        return serve(cfg, args.endpoint, parent)
    except ConfigError as exc:
        print(f"roxi: query model process: {exc}", file=sys.stderr)
        return BOOT_ERROR


if __name__ == "__main__":
    sys.exit(main())
