"""A fake parser for the real extraction child, doing what its document says.

Registered in the child under FAKE_TYPE through the test hook (roxi_mp.extract.worker
FAKE_ENV = "tests.extract_fakes:parse"), so tests can make a real worker hang, allocate,
crash or print on purpose. The document is a command:

    text:WORDS        a section of WORDS (title "fake")
    sections:N        N sections with pages and headings, to check the round trip
    big:N             one section of N bytes
    raise:REASON      ExtractError(REASON)
    bug               a ValueError with two lines (a parser's bug)
    print:WORDS       print WORDS to stdout (must not reach the frames), then text:WORDS
    hang              sleep for ever
    spin              a busy loop for ever
    alloc:MB          allocate MB megabytes at once (MemoryError under the limit)
    grow:MB           touch up to MB megabytes, 16 MB at a time, then abort (a C library out of memory)
    abort             os.abort() (SIGABRT)
    segv              read address 0 (SIGSEGV)
    exit:N            os._exit(N)
"""

from __future__ import annotations

import ctypes
import os
import sys
import time

from roxi_mp.extract import Extracted, ExtractError, Section
from roxi_mp.extract.worker import FAKE_ENV, FAKE_TYPE

#: the child's environment entry that registers this parser
ENV = {FAKE_ENV: "tests.extract_fakes:parse"}


def parse(data: bytes, settings) -> Extracted:
    command, _, arg = data.decode().partition(":")
    if command == "text":
        return Extracted(FAKE_TYPE, "fake", [Section(arg)])
    if command == "sections":
        return Extracted(FAKE_TYPE, None, [Section(f"s{i}", page=i + 1, heading=f"A > B{i}",
                                                   kind="table" if i % 2 else "text") for i in range(int(arg))],
                         pages=int(arg))
    if command == "big":
        return Extracted(FAKE_TYPE, None, [Section("x" * int(arg))])
    if command == "raise":
        raise ExtractError(arg)
    if command == "bug":
        raise ValueError("a parser bug\non two lines")
    if command == "print":
        print(arg)
        sys.stdout.flush()
        os.write(1, b"raw bytes on fd 1\n")
        return Extracted(FAKE_TYPE, "fake", [Section(arg)])
    if command == "hang":
        while True:
            time.sleep(1)
    if command == "spin":
        while True:
            pass
    if command == "alloc":
        blob = b"\x01" * (int(arg) << 20)
        return Extracted(FAKE_TYPE, None, [Section(str(len(blob)))])
    if command == "grow":
        kept = []
        try:
            for _ in range(int(arg) // 16):
                kept.append(b"\x01" * (16 << 20))
        except MemoryError:
            pass  # a C library would not raise either
        os.abort()
    if command == "abort":
        os.abort()
    if command == "segv":
        ctypes.string_at(0)
    if command == "exit":
        os._exit(int(arg))
    raise AssertionError(f"unknown fake command {command!r}")
