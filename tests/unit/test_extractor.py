"""Unit tests of roxi_mp.extract.extractor with the real child process and the fake parser
(tests/extract_fakes.py): results, one-line errors, the time and memory limits, crashes,
a fresh worker after each, and no worker or memory left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest
import zmq

from roxi_mp.config import ExtractSettings
from roxi_mp.extract import Extracted, ExtractError, Section
from roxi_mp.extract.extractor import Extractor, State
from roxi_mp.extract.worker import FAKE_ENV, FAKE_TYPE

from ..conftest import PATIENCE, FakeClock, wait_until
from ..extract_fakes import ENV

#: limits of the tests: a time limit only a hang reaches, however loaded the machine (a
#: worker growing 464 MB took over 0.5 s with both cores busy)
SETTINGS = ExtractSettings(timeout_seconds=PATIENCE, memory_mb=512, max_file_bytes=16 << 20)
#: the tests of the time limit itself
SHORT = ExtractSettings(timeout_seconds=0.5, memory_mb=512, max_file_bytes=16 << 20)


@pytest.fixture
def make():
    made: list[Extractor] = []

    def factory(settings: ExtractSettings = SETTINGS, **kwargs) -> Extractor:
        kwargs.setdefault("env", {**os.environ, **ENV})
        ex = Extractor(settings, **kwargs)
        made.append(ex)
        return ex

    yield factory
    for ex in made:
        ex.close()


def fails(ex: Extractor, command: bytes) -> str:
    with pytest.raises(ExtractError) as info:
        ex.extract(command, FAKE_TYPE)
    reason = str(info.value)
    assert "\n" not in reason
    return reason


def pid(ex: Extractor) -> int:
    assert ex.proc is not None
    return ex.proc.pid


def gone(p: int) -> bool:
    try:
        return psutil.Process(p).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_results_come_back_whole_and_one_worker_reads_them_all(make) -> None:
    ex = make()
    assert ex.extract(b"text:gout and urate", FAKE_TYPE) == Extracted(FAKE_TYPE, "fake", [Section("gout and urate")])
    first = pid(ex)
    got = ex.extract(b"sections:4", FAKE_TYPE)
    assert got.pages == 4 and got.title is None
    assert got.sections[3] == Section("s3", page=4, heading="A > B3", kind="table")
    # a parser printing on stdout does not corrupt the frames
    assert ex.extract(b"print:printed words", FAKE_TYPE).sections == [Section("printed words")]
    assert pid(ex) == first


def test_a_documents_error_is_its_one_line_and_the_worker_stays(make) -> None:
    ex = make()
    ex.extract(b"text:start", FAKE_TYPE)
    first = pid(ex)
    assert fails(ex, b"raise:encrypted; not supported") == "encrypted; not supported"
    assert fails(ex, b"bug") == "the extractor failed: ValueError: a parser bug on two lines"
    assert pid(ex) == first
    assert ex.extract(b"text:next", FAKE_TYPE).sections == [Section("next")]


@pytest.mark.parametrize("command", [b"hang", b"spin"])
def test_a_hang_is_killed_at_the_time_limit_and_the_next_document_gets_a_fresh_worker(make, command) -> None:
    ex = make(SHORT)
    ex.extract(b"text:warm", FAKE_TYPE)  # the worker's start is not the document's time
    hung = pid(ex)
    started = time.monotonic()
    assert fails(ex, command) == "took over 0.5 s (extract.timeout_seconds)"
    took = time.monotonic() - started
    assert 0.5 <= took < 0.5 + PATIENCE / 4
    assert gone(hung) and ex.proc is None
    assert ex.extract(b"text:after", FAKE_TYPE).sections == [Section("after")]
    assert pid(ex) != hung


def test_the_deadline_is_kept_by_poll_with_the_time_it_is_given(make) -> None:
    clock = FakeClock(start=100.0)
    ex = make(SHORT, clock=clock)
    ex.submit("doc", b"hang", FAKE_TYPE)
    wait_until(lambda: ex.poll() == [] and ex.state == State.BUSY, timeout=PATIENCE, what="the request sent")
    sent_at = clock.now
    assert ex.poll(sent_at + 0.49) == [] and ex.busy()
    hung = pid(ex)
    [(token, error)] = ex.poll(sent_at + 0.5)
    assert token == "doc" and str(error) == "took over 0.5 s (extract.timeout_seconds)"
    assert not ex.busy() and gone(hung)


def test_a_2_gb_allocation_is_a_memory_error_and_the_next_document_a_fresh_worker(make) -> None:
    ex = make()
    ex.extract(b"text:warm", FAKE_TYPE)
    first = pid(ex)
    assert fails(ex, b"alloc:2048") == "needed over 512 MB (extract.memory_mb)"
    assert gone(first)
    assert ex.extract(b"text:after", FAKE_TYPE).sections == [Section("after")]
    assert pid(ex) != first


def test_a_crash_near_the_memory_limit_is_told_as_the_memory_limit(make) -> None:
    # A C library that cannot allocate aborts: the worker's peak RSS tells why.
    ex = make()
    assert fails(ex, b"grow:464") == "needed over 512 MB (extract.memory_mb)"
    assert fails(ex, b"abort") == "the extractor crashed (signal 6: SIGABRT)"


def test_a_parent_larger_than_the_limit_does_not_make_a_crash_look_like_memory(make) -> None:
    # The kernel keeps ru_maxrss across execve: a worker spawned by this (grown) process
    # once reported our peak as its own, and every crash read "needed over 512 MB".
    ballast = bytearray(b"\x01") * (600 << 20)  # written, so resident: our peak is over 512 MB
    try:
        ex = make()
        assert fails(ex, b"abort") == "the extractor crashed (signal 6: SIGABRT)"
        assert fails(ex, b"grow:464") == "needed over 512 MB (extract.memory_mb)"
    finally:
        del ballast


@pytest.mark.parametrize("command, reason", [
    (b"abort", "the extractor crashed (signal 6: SIGABRT)"),
    (b"segv", "the extractor crashed (signal 11: SIGSEGV)"),
    (b"exit:3", "the extractor exited with code 3"),
])
def test_a_crash_is_one_line_and_the_next_document_gets_a_fresh_worker(make, command, reason) -> None:
    ex = make()
    ex.extract(b"text:warm", FAKE_TYPE)
    first = pid(ex)
    assert fails(ex, command) == reason
    assert gone(first)
    assert ex.extract(b"text:after", FAKE_TYPE).sections == [Section("after")]
    assert pid(ex) != first


def test_a_reply_over_the_limit_is_refused_by_the_worker(make) -> None:
    ex = make(ExtractSettings(timeout_seconds=5.0, memory_mb=512, max_file_bytes=1024))
    reason = fails(ex, b"big:200000")
    assert reason == "the extracted text (0 MB) is over twice extract.max_file_bytes (1024)"
    assert ex.extract(b"big:100", FAKE_TYPE).sections == [Section("x" * 100)]


def test_a_worker_that_died_between_documents_is_replaced_without_an_error(make) -> None:
    ex = make()
    ex.extract(b"text:warm", FAKE_TYPE)
    idle = pid(ex)
    ex.proc.kill()
    wait_until(lambda: gone(idle), timeout=PATIENCE, what="the idle worker killed")
    assert ex.extract(b"text:after", FAKE_TYPE).sections == [Section("after")]
    assert pid(ex) != idle


def test_close_ends_the_worker_also_in_the_middle_of_a_document(make) -> None:
    ex = make()
    ex.extract(b"text:warm", FAKE_TYPE)
    idle = pid(ex)
    ex.close()
    assert gone(idle) and ex.proc is None and ex.state == State.STOPPED
    ex.submit("doc", b"hang", FAKE_TYPE)
    wait_until(lambda: ex.poll() == [] and ex.state == State.BUSY, timeout=PATIENCE, what="the request sent")
    busy = pid(ex)
    ex.close()
    assert gone(busy) and not ex.busy() and ex.poll() == []


def test_a_worker_that_cannot_start_fails_every_document_without_restarting(make) -> None:
    ex = make(env={**os.environ, FAKE_ENV: "tests.no_such_module:parse"})
    reason = fails(ex, b"text:x")
    assert reason == "the extractor could not start: exited with code 1"
    assert fails(ex, b"text:y") == reason and ex.proc is None  # no new process per document
    ex.close()  # forgets the failure: a sleeping role tries again when it wakes
    assert ex.boot_failure is None


def test_the_non_blocking_api_in_a_zmq_poller(make) -> None:
    ex = make()
    assert not ex.busy() and ex.fileno() is None
    ex.submit(("client", 1), b"text:polled", FAKE_TYPE)
    assert ex.busy()
    with pytest.raises(RuntimeError):
        ex.submit(("client", 2), b"text:second", FAKE_TYPE)
    results = []
    deadline = time.monotonic() + PATIENCE
    while not results and time.monotonic() < deadline:
        poller = zmq.Poller()  # the fd changes with the worker: registered per turn, as a role would
        poller.register(ex.fileno(), zmq.POLLIN)
        poller.poll(1000)
        results = ex.poll()
    assert results == [(("client", 1), Extracted(FAKE_TYPE, "fake", [Section("polled")]))]
    assert not ex.busy()


def test_the_parents_memory_does_not_grow_with_documents(make) -> None:
    ex = make(ExtractSettings(timeout_seconds=30.0, memory_mb=512))
    me = psutil.Process()
    for _ in range(5):
        ex.extract(b"big:2000000", FAKE_TYPE)
    before = me.memory_info().rss
    for i in range(40):
        ex.extract(b"big:2000000", FAKE_TYPE)
        if i % 10 == 0:
            fails(ex, b"abort")  # crashes and restarts leave nothing behind either
    grown = me.memory_info().rss - before
    assert grown < 16 << 20, f"the parent grew {grown >> 20} MB over 40 documents of 2 MB"


def test_the_parent_imports_no_parser() -> None:
    # Ingest and the documents role import the extract package: pdfium, libxml2 and the
    # zip reader load in the child only.
    code = ("import sys, roxi_mp.extract.sniff, roxi_mp.extract.dispatch, roxi_mp.extract.extractor; "
            "print(sorted(m for m in ('pypdfium2', 'lxml', 'docx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=PATIENCE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
