"""The extraction child: `python -m roxi_mp.extract.worker --memory-mb N`.

One long-lived process per Extractor (roxi_mp.extract.extractor) reads documents with the
parsers (roxi_mp.extract.dispatch), one at a time, under a memory limit it sets on itself;
its parent enforces the time limit by killing it. Whatever a file does to it (hang,
allocate without bound, crash pdfium), the parent loses one document, never itself.
The documents are read by a child the worker forks at start (`split_off_reader`), which
tells a crash from running out of memory by that child's own peak RSS.

The protocol, on the child's stdin and stdout: every frame is a 4-byte big-endian length
and that many bytes of msgpack; a request frame is followed by its raw payload, so the
document's bytes are never packed (copied) on either side.

    child  -> parent   [len][{"op": "ready"}]                          once, after imports
    parent -> child    [len][{"op": "extract", "type": T, "size": N, "limits": {...}}][N bytes]
    child  -> parent   [len][{"op": "done", "extracted": {...}}]       (`encode_extracted`)
                    or [len][{"op": "error", "kind": K, "reason": "one line"}]

Error kinds: "bad_input" (the document's fault: the reason is the user's error line),
"memory" (MemoryError under the limit; the parent ends this child, which may hold
fragmented memory), "too_large" (the reply is over `reply_limit`), "failed"
(a parser raised something unexpected: a bug, reported as one line). The child writes
nothing but frames on its stdout: fd 1 is pointed at stderr, so a library that prints
cannot corrupt the stream.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import os
import resource
import signal
import struct
import sys
from typing import Any

import msgpack

from ..config_sections import ExtractSettings
from ..process import child_parser, die_with_parent
from . import Extracted, ExtractError, Section

#: every frame's length prefix: unsigned 32 bits, big-endian
LENGTH = struct.Struct(">I")
#: largest header frame either side sends, bytes (a request header, an error reply)
MAX_HEADER_BYTES = 64 * 1024
#: error reply kinds
BAD_INPUT, MEMORY, TOO_LARGE, FAILED = "bad_input", "memory", "too_large", "failed"
#: longest reason line sent back, characters
MAX_REASON_CHARS = 300

#: Test hook (environment variable of the child): "module:function" registers that function
#: as the parser of FAKE_TYPE, so tests can make the real child hang, allocate or crash on
#: purpose (tests/extract_fakes.py). It cannot fire by accident in production: it needs
#: both this variable in the child's environment (a name no roxi setting uses: ROXI_TEST_
#: is not a config section, so the config loader ignores it) and a request of FAKE_TYPE,
#: a content type that resolve_type never returns and no parser table holds otherwise.
FAKE_ENV = "ROXI_TEST_FAKE_PARSER"
FAKE_TYPE = "application/x-roxi-test-fake"

#: a reader killed by a signal with a peak RSS over this fraction of its memory limit ran out
#: of memory (a C library that cannot allocate aborts; only Python turns it into a MemoryError)
MEMORY_DEATH_FRACTION = 0.9
#: the worker's exit code when its reader died so (see `split_off_reader`)
OVER_MEMORY_EXIT = 86


# --- frames (both sides) -------------------------------------------------------------------
def pack_frame(message: dict[str, Any]) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return LENGTH.pack(len(body)) + body


def request_header(content_type: str, size: int, settings: ExtractSettings) -> bytes:
    return pack_frame({"op": "extract", "type": content_type, "size": size,
                       "limits": dataclasses.asdict(settings)})


def encode_extracted(extracted: Extracted) -> dict[str, Any]:
    return {"content_type": extracted.content_type, "title": extracted.title, "pages": extracted.pages,
            "sections": [[s.text, s.page, s.heading, s.kind] for s in extracted.sections]}


def decode_extracted(fields: dict[str, Any]) -> Extracted:
    return Extracted(content_type=fields["content_type"], title=fields["title"], pages=fields["pages"],
                     sections=[Section(*row) for row in fields["sections"]])


# --- the child ---------------------------------------------------------------------------
def limit_memory(memory_mb: int) -> None:
    """Cap the memory this process can take. RLIMIT_DATA, not RLIMIT_AS: since Linux 4.7
    it counts every private writable mapping (the heap, and the anonymous mmaps large
    allocations get), which is what a bomb must take, but not address space reserved and
    never written, which RLIMIT_AS counts: glibc's per-thread arenas, mapped libraries, and
    in pdfium builds that use PartitionAlloc, pools of GiBs reserved at start. Measured with
    the pdfium here (pypdfium2 5.x, pdfium 159, built from source without those pools): a
    500-page PDF reads with VmSize 49 MB and VmData 21 MB, so either limit at 256 MB lets it
    through and either stops a 2 GB allocation; RLIMIT_DATA also stays right for a pdfium
    that reserves pools."""
    limit = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def split_off_reader(memory_mb: int) -> None:
    """Fork the process that reads documents and return in it; this process waits for it and
    exits as it did, or with OVER_MEMORY_EXIT when it was killed by a signal near the limit.

    Why not judge by the worker's own peak RSS: the kernel keeps a process's ru_maxrss across
    execve, so a worker spawned by a large parent (vfork: the parent's mm is the one replaced)
    reports the parent's peak as its own, and every crash looked like running out of memory
    once pytest or a role had grown past the limit. A forked child starts a count of its own.
    This process stays small (the parsers load in the child) and dies with it either way."""
    waiter = os.getpid()
    pid = os.fork()
    if pid == 0:
        die_with_parent(signal.SIGKILL)
        if os.getppid() != waiter:  # the waiter was killed before the line above
            os._exit(1)
        return
    _, status, usage = os.wait4(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if usage.ru_maxrss * 1024 >= MEMORY_DEATH_FRACTION * (memory_mb << 20):
            os._exit(OVER_MEMORY_EXIT)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)  # die of the same signal, so the parent says which
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def install_fake(environ: dict[str, str] | os._Environ) -> None:
    """Register the tests' fake parser under FAKE_TYPE when FAKE_ENV names one (see FAKE_ENV)."""
    target = environ.get(FAKE_ENV)
    if not target:
        return
    from . import dispatch
    module, _, name = target.partition(":")
    dispatch.PARSERS[FAKE_TYPE] = getattr(importlib.import_module(module), name)


def read_exact(fd: int, size: int) -> bytes | None:
    """`size` bytes from `fd`, or None at end of file (the parent closed the pipe or died)."""
    parts, need = [], size
    while need:
        block = os.read(fd, min(need, 1 << 20))
        if not block:
            return None
        parts.append(block)
        need -= len(block)
    return b"".join(parts)


def reply_limit(settings: ExtractSettings) -> int:
    """Largest reply frame, bytes: the parent holds a document's whole text, so it is
    bounded by the limit on the files themselves (twice: UTF-8, headings, packing)."""
    return 2 * settings.max_file_bytes + MAX_HEADER_BYTES


def handle(header: dict[str, Any], data: bytes) -> bytes:
    """The reply frame to one request."""
    from .dispatch import extract_bytes
    settings = ExtractSettings(**header["limits"])
    try:
        extracted = extract_bytes(data, header["type"], settings)
        frame = pack_frame({"op": "done", "extracted": encode_extracted(extracted)})
        if len(frame) > reply_limit(settings):
            kind, reason = TOO_LARGE, (f"the extracted text ({len(frame) >> 20} MB) is over twice "
                                       f"extract.max_file_bytes ({settings.max_file_bytes})")
        else:
            return frame
    except ExtractError as exc:
        kind, reason = BAD_INPUT, str(exc)
    except MemoryError:
        kind, reason = MEMORY, "out of memory"
    except RecursionError:
        kind, reason = BAD_INPUT, "nested too deeply to read"
    except Exception as exc:  # a parser's bug on a strange file: this document's error line
        kind, reason = FAILED, f"{type(exc).__name__}: {exc}"
    # (outside the except blocks: their traceback, and whatever it kept alive, is gone)
    return pack_frame(error_reply(kind, reason))


#: documents at least this large are followed by a full garbage collection (1 MiB)
COLLECT_AFTER_BYTES = 1 << 20


def error_reply(kind: str, reason: str) -> dict[str, Any]:
    line = " ".join(reason.split())  # one line, whatever the parser said
    if len(line) > MAX_REASON_CHARS:
        line = line[:MAX_REASON_CHARS - 3] + "..."
    return {"op": "error", "kind": kind, "reason": line or kind}


def serve(requests: int, replies: int) -> int:
    """Answer requests until the parent closes the pipe; returns the exit code."""
    os.write(replies, pack_frame({"op": "ready"}))
    while True:
        prefix = read_exact(requests, LENGTH.size)
        if prefix is None:
            return 0
        (length,) = LENGTH.unpack(prefix)
        if length > MAX_HEADER_BYTES:
            return 2  # not our parent speaking: stop rather than read garbage
        body = read_exact(requests, length)
        header = msgpack.unpackb(body, raw=False) if body is not None else None
        data = read_exact(requests, header["size"]) if header is not None else None
        if data is None:
            return 0
        frame = handle(header, data)
        size = len(data)
        del data
        view = memoryview(frame)
        while view:
            view = view[os.write(replies, view):]
        del view, frame
        if size >= COLLECT_AFTER_BYTES:
            # A large document's garbage goes before the next one comes; after every
            # document, a full collection (~4 ms with the parsers loaded) cost a small
            # HTML page ten times its parse.
            gc.collect()


def main(argv: list[str] | None = None) -> int:
    parser = child_parser("roxi_mp.extract.worker")
    parser.add_argument("--memory-mb", type=int, required=True)
    args = parser.parse_args(argv)
    die_with_parent(signal.SIGKILL)  # a worker stuck in a parser cannot handle SIGTERM anyway
    limit_memory(args.memory_mb)
    replies = os.dup(1)
    os.dup2(2, 1)  # print() in a parser goes to stderr, never into a frame
    split_off_reader(args.memory_mb)
    from . import dispatch
    dispatch.preload()
    install_fake(os.environ)
    return serve(0, replies)


if __name__ == "__main__":
    sys.exit(main())
