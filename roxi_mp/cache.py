"""A bounded LRU of recent query results with a time-to-live.

Entries belong to one generation of the vectors file: a commit makes every cached answer
possibly wrong, so `invalidate()` drops them all rather than guessing which are stale.
The clock is injected so tests can age entries without sleeping.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable, Hashable


class ResultCache:
    def __init__(self, *, max_entries: int, ttl_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.ttl = ttl_seconds
        self.clock = clock
        self._items: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        stored, value = item
        if self.clock() - stored > self.ttl:
            del self._items[key]
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def holds(self, key: Hashable) -> bool:
        """Whether `get(key)` would find it now; counts nothing, moves nothing."""
        item = self._items.get(key)
        return item is not None and self.clock() - item[0] <= self.ttl

    def put(self, key: Hashable, value: Any) -> None:
        if self.max_entries <= 0:
            return
        self._items[key] = (self.clock(), value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def invalidate(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
