"""The query model process over its socket pair: answers, failures, and every wait bounded."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from roxi_mp import model_process
from roxi_mp.embedders import EmbedError, make_embedder
from roxi_mp.errors import BadInput, ConfigError
from roxi_mp.model_process import ModelProcess
from tests.conftest import PATIENCE

TEXTS = ["gout flare in the big toe", "giant cell arteritis and jaw claudication"]


@pytest.fixture
def cfg(make_config):
    cfg = make_config()  # the hashing backend: a real child, a model that loads at once
    cfg.run_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    return cfg


@pytest.fixture
def child(cfg):
    proc = ModelProcess(cfg)
    yield proc
    proc.unload()


def test_vectors_are_the_models_own(cfg, child) -> None:
    got = child.encode(TEXTS)
    assert got.dtype == np.float32 and got.shape == (2, cfg.hashing.dim)
    np.testing.assert_array_equal(got, make_embedder(cfg).encode(TEXTS))
    assert child.encode([]).shape == (0, cfg.hashing.dim)
    later = child.encode_later(TEXTS[:1])  # sent now, read when asked
    np.testing.assert_array_equal(later(), got[:1])


def test_unload_ends_the_child_and_load_starts_another(child) -> None:
    child.load()
    first = child.proc.pid
    child.unload()
    assert child.proc is None and not child.loaded
    child.encode(TEXTS)
    assert child.loaded and child.proc.pid != first


def test_a_dead_child_is_replaced_at_the_next_call(child) -> None:
    child.load()
    victim = child.proc.pid
    os.kill(victim, signal.SIGKILL)
    child.proc.wait(timeout=PATIENCE)
    assert child.encode(TEXTS).shape[0] == 2 and child.proc.pid != victim


def test_a_child_killed_during_a_request_fails_that_request_only(child) -> None:
    child.load()
    victim = child.proc.pid
    os.kill(victim, signal.SIGSTOP)  # the request waits unread...
    later = child.encode_later(TEXTS)
    os.kill(victim, signal.SIGKILL)  # ...and its reader dies
    with pytest.raises(EmbedError, match="query model process"):
        later()
    assert child.proc is None
    assert child.encode(TEXTS).shape[0] == 2 and child.proc.pid != victim


def test_a_hung_child_is_a_timeout_not_a_hang(child, monkeypatch) -> None:
    monkeypatch.setattr(model_process, "ENCODE_TIMEOUT", 0.3)
    child.load()
    os.kill(child.proc.pid, signal.SIGSTOP)
    started = time.monotonic()
    with pytest.raises(EmbedError, match="no answer in time"):
        child.encode(TEXTS)
    assert time.monotonic() - started < PATIENCE
    assert child.proc is None  # replaced on the next call
    assert child.encode(TEXTS).shape[0] == 2


def test_the_childs_refusal_leaves_it_running(child) -> None:
    child.load()
    pid = child.proc.pid
    with pytest.raises(EmbedError, match="unknown op"):
        child._call({"op": "nonsense"}, 5.0)
    assert child.loaded and child.proc.pid == pid
    with pytest.raises(BadInput):
        child.encode(["fine", 3])  # refused before it is sent
    assert child.encode(TEXTS).shape[0] == 2 and child.proc.pid == pid


def test_too_many_texts_at_once_are_refused(child) -> None:
    with pytest.raises(EmbedError, match="at most"):
        child.encode(["x"] * (model_process.MAX_ROWS + 1))


def test_a_child_that_cannot_start_says_so(make_config, monkeypatch, tmp_path) -> None:
    cfg = make_config(embedder__backend="minilm", minilm__compute="int8")
    cfg.run_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("ROXI_MODEL_DIR", str(blocker / "models"))  # the child cannot write its model
    proc = ModelProcess(cfg)
    with pytest.raises(ConfigError, match="exited with 78"):
        proc.load()
    assert proc.proc is None and proc.sock is None


def test_the_child_leaves_when_its_end_closes(cfg) -> None:
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-m", "roxi_mp.model_process", *cfg.to_argv(),
                             "--fd", str(theirs.fileno())], pass_fds=(theirs.fileno(),))
    theirs.close()
    ours.settimeout(PATIENCE)
    model_process.send_message(ours, {"op": "ping"})
    assert model_process.recv_message(ours)["pong"] is True
    ours.close()
    assert proc.wait(timeout=PATIENCE) == 0


def test_garbage_from_the_parent_ends_the_child_cleanly(cfg) -> None:
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-m", "roxi_mp.model_process", *cfg.to_argv(),
                             "--fd", str(theirs.fileno())], pass_fds=(theirs.fileno(),))
    theirs.close()
    ours.sendall(model_process.LENGTH.pack(3) + b"\xc1\xc1\xc1")  # not msgpack
    assert proc.wait(timeout=PATIENCE) == 0
    ours.close()


def test_a_reply_nobody_read_is_never_taken_for_the_next_one(child) -> None:
    # A query that fails between sending its text and reading its vector (its lexical leg
    # raised, say) leaves that vector in the pair: the next query must get its own.
    first, second = child.encode(TEXTS[:1]), child.encode(TEXTS[1:])
    assert not np.array_equal(first, second)
    abandoned = child.encode_later(TEXTS[:1])
    np.testing.assert_array_equal(child.encode(TEXTS[1:]), second)
    with pytest.raises(EmbedError, match="newer request"):
        abandoned()  # its reply was skipped: it must not read another's
    later = [child.encode_later(TEXTS[:1]), child.encode_later(TEXTS[1:])]
    np.testing.assert_array_equal(later[1](), second)
    np.testing.assert_array_equal(child.encode(TEXTS[:1]), first)
