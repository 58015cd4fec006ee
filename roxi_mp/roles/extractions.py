"""The documents role's puts waiting for extraction: a bounded queue in front of one Extractor.

A put of a PDF, HTML page or Word document is checked at once, then its content goes to
the extraction child (roxi_mp.extract.extractor.Extractor: its own process, one document
at a time, with a time and memory limit). Puts wait here in arrival order, at most
documents.max_pending_extractions of them counting the one being extracted (a full queue
is a `busy` reply: a client that puts faster than documents are extracted is told to
slow down, and the role's memory stays bounded by that many documents). Nothing here
blocks: `advance(now)` collects what the extractor finished (its `poll` also kills a
worker past its time limit) and hands it the next document; the role polls `fileno()`
beside its socket so a finished extraction is answered at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ..documents import Checked
from ..errors import Busy
from ..extract import Extracted
from ..extract.extractor import Extractor


@dataclass
class Waiting:
    """A put whose content is being extracted, or waits its turn; answered when that ends."""

    token: int
    request_id: Any
    checked: Checked
    envelope: list[bytes] = field(default_factory=list)  # the request's, for the late reply


class Extractions:
    """Puts waiting for extraction, the oldest in the extractor (made on first use)."""

    def __init__(self, make_extractor: Callable[[], Extractor], *, limit: int) -> None:
        self.make_extractor = make_extractor
        self.limit = limit
        self.extractor: Extractor | None = None  # closed (its worker killed) by close()
        self.current: Waiting | None = None  # the one being extracted
        self.queue: deque[Waiting] = deque()

    def __len__(self) -> int:
        return len(self.queue) + (self.current is not None)

    def __iter__(self) -> Iterator[Waiting]:
        if self.current is not None:
            yield self.current
        yield from self.queue

    def check_room(self) -> None:
        """Busy when `limit` puts already wait (the new one is refused, not queued)."""
        if len(self) >= self.limit:
            raise Busy(f"{len(self)} documents already wait for extraction "
                       f"(documents.max_pending_extractions is {self.limit}); try again")

    def add(self, waiting: Waiting) -> None:
        self.queue.append(waiting)

    def fileno(self) -> int | None:
        """The extractor's pipe while a document is in it, else None (nothing to watch)."""
        return self.extractor.fileno() if self.current is not None else None

    def advance(self, now: float) -> list[tuple[Waiting, Extracted | BaseException]]:
        """The puts whose extraction ended, each with its sections or its error (an
        ExtractError: the document's fault; another error: the worker could not start),
        after handing the next document to the extractor."""
        finished: list[tuple[Waiting, Extracted | BaseException]] = []
        if self.current is not None:
            for token, result in self.extractor.poll(now):
                if token == self.current.token:
                    finished.append((self.current, result))
                    self.current = None
        if self.current is None and self.queue:
            if self.extractor is None:
                self.extractor = self.make_extractor()
            if not self.extractor.busy():
                nxt = self.queue.popleft()
                try:
                    self.extractor.submit(nxt.token, nxt.checked.data, nxt.checked.content_type)
                except Exception as exc:  # e.g. the worker cannot start: this put's error reply
                    finished.append((nxt, exc))
                else:
                    self.current = nxt
        return finished

    def drain(self) -> list[Waiting]:
        """Every waiting put, taken out (the role is stopping: each gets an error reply)."""
        every = list(self)
        self.current, self.queue = None, deque()
        return every

    def close(self) -> None:
        """Kill the worker (its memory goes back); the next document starts a fresh one."""
        if self.extractor is not None:
            self.extractor.close()
            self.extractor = None
