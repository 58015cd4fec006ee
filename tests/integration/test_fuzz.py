"""Protocol fuzzing (hypothesis) against the real query and control sockets.

Every generated message gets an error reply (or, with no request frame at all, is dropped
and counted by the server); the processes never crash or restart, keep answering, and
their RSS does not grow. 10k+ messages in all (issue 8, acceptance 1).
"""

from __future__ import annotations

import math

import msgpack
import numpy as np
import psutil
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roxi_mp import config as config_mod
from roxi_mp import protocol

from ..conftest import PATIENCE, TEST_DEFAULTS, System, write_toml
from ..corpus import populate

DIM = 64
MAX_BYTES = 64 * 1024  # limits.max_message_bytes of the fuzzed system: oversized is cheap to make
#: messages per hypothesis example, and examples per socket: 2 x 1300 x 4 = 10,400 messages
PER_EXAMPLE, EXAMPLES = 4, 1300

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70).filter(lambda i: -2**63 <= i < 2**64)
           | st.floats(allow_nan=True) | st.text(max_size=40) | st.binary(max_size=40))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=4), max_leaves=8)
QUERY_OPS = ["query", "stats", "ping", "wake", "sleep"]
#: control commands the fuzzer may name; never stop or restart the system under test
CONTROL_OPS = ["ping", "status", "wake", "sleep", "notify"]


def vector_bytes(draw) -> bytes:
    kind = draw(st.sampled_from(["good", "nan", "inf", "short", "long", "random", "empty"]))
    if kind == "random":
        return draw(st.binary(max_size=600))
    n = {"short": DIM - 1, "long": DIM + 1, "empty": 0}.get(kind, DIM)
    v = np.ones(n, dtype=np.float32) / math.sqrt(max(n, 1))
    if kind == "nan" and n:
        v[draw(st.integers(0, n - 1))] = np.nan
    if kind == "inf" and n:
        v[0] = np.inf
    return v.tobytes()


@st.composite
def messages(draw, ops: list[str]) -> list[bytes]:
    """The frames after the empty delimiter: a request map (good, odd or broken) and extras."""
    fields = draw(st.dictionaries(st.sampled_from(["v", "id", "op", "k", "text", "dtype", "shape", "with_text",
                                                   "target", "name", "role"]), values, max_size=6))
    shape = draw(st.sampled_from(["keep", "good", "junk"]))
    if shape == "good":
        fields.update(v=protocol.VERSION, op=draw(st.sampled_from(ops)), id=draw(st.text(max_size=10)))
        if fields["op"] == "query" and draw(st.booleans()):
            fields.update(dtype=draw(st.sampled_from(["float32", "float16", "float64", "int8"])),
                          shape=draw(st.sampled_from([[1, DIM], [DIM], [2, DIM], [1, DIM + 1], [0, DIM], [-1, DIM]])))
    elif shape == "junk":
        fields["v"] = draw(st.sampled_from([0, 2, 999, "1", None, -1, 1.0]))
    kind = draw(st.sampled_from(["map", "map", "map", "not msgpack", "truncated", "not a map", "oversized"]))
    if kind == "map":
        head = msgpack.packb(fields, use_bin_type=True)
    elif kind == "not msgpack":
        head = draw(st.binary(min_size=1, max_size=200))
    elif kind == "truncated":
        packed = msgpack.packb(fields, use_bin_type=True)
        head = packed[:draw(st.integers(0, max(0, len(packed) - 1)))]
    elif kind == "not a map":
        head = msgpack.packb(draw(values), use_bin_type=True)
    else:  # over the request limit, under the socket's hard cap (2x): a too_large reply
        head = msgpack.packb({**fields, "pad": b"x" * (MAX_BYTES + 10)}, use_bin_type=True)
    extra: list[bytes] = []
    if draw(st.booleans()):
        extra = [vector_bytes(draw) for _ in range(draw(st.integers(1, 2)))]
    return [head, *extra]


class Fuzzed:
    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.sent = self.errors = self.oks = self.dropped = 0

    def send(self, frames: list[bytes]) -> None:
        self.sent += 1
        self.sock.send_multipart([b"", *frames])
        if not self.sock.poll(int(PATIENCE * 1000)):  # a reply that never comes, not a slow one
            raise AssertionError(f"no reply within {PATIENCE} s to {[f[:60] for f in frames]}")
        reply = self.sock.recv_multipart()
        assert reply[0] == b"" and len(reply) >= 2
        body = msgpack.unpackb(reply[1], raw=False)
        assert isinstance(body, dict) and isinstance(body.get("ok"), bool), body
        if body["ok"]:
            self.oks += 1
        else:
            self.errors += 1
            assert isinstance(body.get("code"), str) and isinstance(body.get("message"), str), body
            assert "\n" not in body["message"]


@pytest.fixture(scope="module")
def fuzz_system(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    settings_ = {**TEST_DEFAULTS, "hashing__dim": DIM, "limits__max_message_bytes": MAX_BYTES,
                 "backup__milestones": False}
    cfg = config_mod.load(write_toml(root / "roxi.toml", settings_), data_dir=root / "data", env={})
    populate(cfg, rows=2000)
    s = System(cfg).start()
    try:
        yield s
    finally:
        s.stop()
        s.kill_everything()


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


@pytest.mark.parametrize("target, ops", [("query", QUERY_OPS), ("control", CONTROL_OPS)])
def test_fuzzed_messages_get_error_replies_and_nothing_breaks(fuzz_system, target, ops):
    s = fuzz_system
    pid_name = "query" if target == "query" else None
    pid = s.pid("query") if pid_name else s.proc.pid
    ctx = zmq.Context.instance()
    sock = protocol.configure(ctx.socket(zmq.DEALER), hwm=100)
    sock.connect(s.cfg.endpoint(target))
    fuzzed = Fuzzed(sock)
    rss: dict[str, float] = {}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(st.lists(messages(ops), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
    def run(batch: list[list[bytes]]) -> None:
        for frames in batch:
            fuzzed.send(frames)
        if fuzzed.sent == 400 * PER_EXAMPLE:  # past the first allocations: the baseline
            rss["before"] = rss_mb(pid)

    try:
        run()
        # A message without any request frame cannot be answered: dropped and counted.
        for _ in range(50):
            sock.send_multipart([b""])
        sock.send_multipart([b"", msgpack.packb({"v": 1, "op": "ping", "id": "last"})])
        assert sock.poll(int(PATIENCE * 1000))
        assert msgpack.unpackb(sock.recv_multipart()[1])["ok"] is True
    finally:
        sock.close(0)
    rss["after"] = rss_mb(pid)
    assert fuzzed.sent >= EXAMPLES * PER_EXAMPLE
    assert fuzzed.errors > fuzzed.sent // 2  # mostly refused, as generated
    # The process answering is the one that started: no crash, no restart.
    assert (s.pid("query") if pid_name else s.proc.pid) == pid
    role = s.role("query") if pid_name else None
    if role is not None:
        assert role["restarts"] == 0
        s.wait_for(lambda: s.role("query")["dropped"] >= 50, timeout=PATIENCE, what="drops counted")
    assert rss["after"] - rss["before"] < 5.0, rss
    print(f"{target}: {fuzzed.sent} messages, {fuzzed.errors} error replies, {fuzzed.oks} ok, "
          f"RSS {rss['before']:.1f} -> {rss['after']:.1f} MB")
