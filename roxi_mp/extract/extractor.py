"""The parent side of the extraction child: `Extractor`, one worker process, one document at a time.

`roxi ingest` calls `extract(data, content_type)`, which blocks until the document is read
or refused. The documents role cannot block (its heartbeats and other requests go on), so
it uses the same machinery piecewise: `submit` a document, add `fileno()` to its poller,
and call `poll(now)` when that fd is readable or its poll times out; `poll` returns the
finished (token, Extracted | ExtractError) and enforces the time limit.

The worker (roxi_mp.extract.worker) starts on the first document, stays for the next ones
(imports cost once), and is killed with SIGKILL when a document runs past
extract.timeout_seconds; it also dies of a crash or its memory limit. Either way that
document gets a one-line ExtractError and the next one a fresh worker. `close()` ends the
worker, so that a sleeping documents role gives its memory back. Every wait is bounded:
reads are non-blocking, and the only write, a request, goes to a worker that is idle
reading its stdin, under the document's deadline.
"""

from __future__ import annotations

import enum
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping

import msgpack

from ..config_sections import ExtractSettings
from . import Extracted, ExtractError
from .worker import FAILED, LENGTH, MEMORY, OVER_MEMORY_EXIT, decode_extracted, reply_limit, request_header

#: seconds a new worker may take to import its parsers and say it is ready
START_SECONDS = 60.0
#: bytes read from the worker per `poll` at most, so a large reply cannot hold the role's loop
READ_BUDGET = 64 << 20
#: seconds to wait for a killed or exiting worker to be reaped
REAP_SECONDS = 10.0

Result = Extracted | ExtractError


class State(enum.Enum):
    STOPPED = "stopped"  # no worker process
    STARTING = "starting"  # started, its ready frame not read yet
    IDLE = "idle"  # ready for a request
    BUSY = "busy"  # a request sent, its reply not read yet


@dataclass
class _Job:
    token: Hashable
    data: bytes | None  # dropped once sent: the parent holds no copy while the child reads
    content_type: str
    deadline: float = 0.0  # set when the request is sent


class Extractor:
    """One extraction worker and the document in it (see the module docstring)."""

    def __init__(self, settings: ExtractSettings, *, clock: Callable[[], float] = time.monotonic,
                 env: Mapping[str, str] | None = None, stderr: Any = subprocess.DEVNULL) -> None:
        self.settings = settings
        self.clock = clock
        self.env = dict(os.environ if env is None else env)
        self.stderr = stderr  # the worker's stderr: pdfium's warnings are noise on a terminal
        self.state = State.STOPPED
        self.proc: subprocess.Popen | None = None
        self.job: _Job | None = None
        self.start_deadline = 0.0
        self.buffer = bytearray()
        self.finished: list[tuple[Hashable, Result]] = []
        self.boot_failure: str | None = None  # a worker that cannot start is not restarted per file

    # --- the blocking API (ingest) ---------------------------------------------------------
    def extract(self, data: bytes, content_type: str) -> Extracted:
        """The document read by the worker, or ExtractError with its one-line reason."""
        token = object()
        self.submit(token, data, content_type)
        while True:
            for _, result in self.poll():
                if isinstance(result, ExtractError):
                    raise result
                return result
            self._wait_readable()

    # --- the non-blocking API (the documents role) -----------------------------------------
    def busy(self) -> bool:
        return self.job is not None or bool(self.finished)

    def fileno(self) -> int | None:
        """The fd to poll for the worker's frames (a new worker has a new one), or None."""
        return self.proc.stdout.fileno() if self.proc is not None else None

    def submit(self, token: Hashable, data: bytes, content_type: str, now: float | None = None) -> None:
        """Start reading one document; its result comes from `poll` under `token`."""
        if self.busy():
            raise RuntimeError("the extractor takes one document at a time")
        now = self.clock() if now is None else now
        self.job = _Job(token, data, content_type)
        if self.state == State.IDLE and self.proc.poll() is not None:
            self._forget_worker()  # died between documents (the OOM killer, a kill by hand): not this one's fault
        if self.boot_failure is not None:
            self._finish(ExtractError(self.boot_failure))
        elif self.state == State.STOPPED:
            self._spawn(now)
        elif self.state == State.IDLE:
            self._send(now)

    def poll(self, now: float | None = None) -> list[tuple[Hashable, Result]]:
        """Finished documents: read what the worker wrote, or end a worker past its deadline."""
        now = self.clock() if now is None else now
        if self.state in (State.STARTING, State.BUSY):
            message = self._read()
            if message is not None:
                try:
                    self._receive(message, now)
                except _BadFrame as exc:
                    self._end_worker()
                    self._finish(ExtractError(f"the extractor failed: {exc}"))
            elif self.state in (State.STARTING, State.BUSY) and now >= self._deadline():
                self._time_out()
        finished, self.finished = self.finished, []
        return finished

    def close(self) -> None:
        """End the worker (a document in it is dropped, with no result) and forget a failed start."""
        self._end_worker()
        self.job = None
        self.finished = []
        self.boot_failure = None

    def __enter__(self) -> "Extractor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the worker ------------------------------------------------------------------------
    def _spawn(self, now: float) -> None:
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "roxi_mp.extract.worker", "--memory-mb", str(self.settings.memory_mb)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=self.env, close_fds=True)
        except OSError as exc:
            self.boot_failure = f"the extractor could not start: {exc.strerror or exc}"
            self._finish(ExtractError(self.boot_failure))
            return
        os.set_blocking(self.proc.stdout.fileno(), False)
        os.set_blocking(self.proc.stdin.fileno(), False)
        self.state = State.STARTING
        # (the worker's imports are not the document's time: its deadline starts when it is sent)
        self.start_deadline = now + max(START_SECONDS, self.settings.timeout_seconds)
        self.buffer.clear()

    def _send(self, now: float) -> None:
        """Write the job's request to the idle worker, within the job's deadline."""
        job = self.job
        job.deadline = now + self.settings.timeout_seconds
        self.state = State.BUSY
        data, job.data = job.data, None
        try:
            self._write(request_header(job.content_type, len(data), self.settings), job.deadline)
            self._write(data, job.deadline)
        except BrokenPipeError:
            self._died()
        except TimeoutError:
            self._time_out()

    def _write(self, data: bytes, deadline: float) -> None:
        view, fd = memoryview(data), self.proc.stdin.fileno()
        while view:
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise TimeoutError
            if select.select([], [fd], [], remaining)[1]:
                try:
                    view = view[os.write(fd, view[:1 << 20]):]
                except BlockingIOError:
                    continue

    def _read(self) -> dict | None:
        """The worker's next message, when whole. A worker that closed its stdout died, one
        that sent what is no frame of ours is ended: either way the job has its error."""
        fd, budget = self.proc.stdout.fileno(), READ_BUDGET
        try:
            while True:
                message = self._take_frame()
                if message is not None or budget <= 0:
                    return message
                try:
                    block = os.read(fd, min(budget, 1 << 20))
                except BlockingIOError:
                    return None
                if not block:
                    self._died()
                    return None
                self.buffer += block
                budget -= len(block)
        except _BadFrame as exc:
            self._end_worker()
            self._finish(ExtractError(f"the extractor failed: {exc}"))
            return None

    def _take_frame(self) -> dict | None:
        if len(self.buffer) < LENGTH.size:
            return None
        (length,) = LENGTH.unpack_from(self.buffer)
        if length > reply_limit(self.settings):  # the worker refuses to send more
            raise _BadFrame(f"a reply of {length} bytes")
        if len(self.buffer) < LENGTH.size + length:
            return None
        try:
            message = msgpack.unpackb(memoryview(self.buffer)[LENGTH.size:LENGTH.size + length], raw=False)
        except ValueError as exc:  # msgpack's errors are ValueErrors
            raise _BadFrame(f"an unreadable reply ({exc})") from None
        del self.buffer[:LENGTH.size + length]
        if not isinstance(message, dict) or "op" not in message:
            raise _BadFrame("a reply with no op")
        return message

    def _receive(self, message: dict, now: float) -> None:
        if self.state == State.STARTING:
            if message["op"] != "ready":
                raise _BadFrame(f"{message['op']!r} before ready")
            self.state = State.IDLE
            if self.job is not None:
                self._send(now)
            return
        self.state = State.IDLE
        if message["op"] == "done":
            try:
                extracted = decode_extracted(message["extracted"])
            except (KeyError, TypeError, ValueError) as exc:
                raise _BadFrame(f"a malformed result ({type(exc).__name__})") from None
            self._finish(extracted)
        elif message.get("kind") == MEMORY:
            self._end_worker()  # its heap may stay fragmented and large: a fresh one for the next
            self._finish(ExtractError(self._over_memory()))
        elif message.get("kind") == FAILED:
            self._finish(ExtractError(f"the extractor failed: {message['reason']}"))
        else:
            self._finish(ExtractError(str(message.get("reason"))))

    def _time_out(self) -> None:
        starting = self.state == State.STARTING
        self._end_worker()
        if starting:
            allowed = max(START_SECONDS, self.settings.timeout_seconds)
            self.boot_failure = f"the extractor did not start within {allowed:g} s"
            self._finish(ExtractError(self.boot_failure))
        else:
            self._finish(ExtractError(f"took over {self.settings.timeout_seconds:g} s (extract.timeout_seconds)"))

    def _died(self) -> None:
        """The worker closed its stdout: it exited or was killed. Reap it and say why."""
        starting = self.state == State.STARTING
        status = self._reap(kill=False)
        self._forget_worker()
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == OVER_MEMORY_EXIT:
            reason = self._over_memory()
        elif os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            reason = f"the extractor crashed (signal {sig}: {_signal_name(sig)})"
        else:
            reason = f"the extractor exited with code {os.WEXITSTATUS(status) if os.WIFEXITED(status) else status}"
        if starting:
            self.boot_failure = reason.replace("the extractor", "the extractor could not start:", 1)
            reason = self.boot_failure
        self._finish(ExtractError(reason))

    def _over_memory(self) -> str:
        return f"needed over {self.settings.memory_mb} MB (extract.memory_mb)"

    def _end_worker(self) -> None:
        if self.proc is not None:
            self._reap(kill=True)
        self._forget_worker()

    def _reap(self, *, kill: bool) -> int:
        """The wait status of the worker, killed first if `kill`. Bounded: a
        worker that outlives REAP_SECONDS (stuck in the kernel) is left to Popen's own reaping."""
        proc = self.proc
        if kill:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + REAP_SECONDS
        while proc.returncode is None:
            try:
                pid, status = os.waitpid(proc.pid, os.WNOHANG)
            except ChildProcessError:
                return 0
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
                return status
            if time.monotonic() >= deadline:
                if not kill:
                    return self._reap(kill=True)
                break
            time.sleep(0.005)
        return 0

    def _forget_worker(self) -> None:
        if self.proc is not None:
            for pipe in (self.proc.stdin, self.proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
        self.proc = None
        self.state = State.STOPPED
        self.buffer = bytearray()

    def _finish(self, result: Result) -> None:
        if self.job is not None:
            self.finished.append((self.job.token, result))
        self.job = None

    def _deadline(self) -> float:
        return self.start_deadline if self.state == State.STARTING else self.job.deadline

    def _wait_readable(self) -> None:
        """Sleep until the worker writes, its deadline passes, or (no worker) not at all."""
        if self.proc is None or self.job is None:
            return
        remaining = self._deadline() - self.clock()
        if remaining > 0:
            select.select([self.proc.stdout.fileno()], [], [], min(remaining, 1.0))


class _BadFrame(Exception):
    """The worker wrote something that is not a frame of the protocol (a bug, never a document)."""


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "unknown"
