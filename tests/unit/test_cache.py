"""The query-result cache: LRU bound, TTL with an injected clock, invalidation."""

from __future__ import annotations

from roxi_mp.cache import ResultCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_hit_and_miss_counts():
    cache = ResultCache(max_entries=4, ttl_seconds=10, clock=Clock())
    assert cache.get("a") is None
    cache.put("a", [1])
    assert cache.get("a") == [1]
    assert (cache.hits, cache.misses) == (1, 1)


def test_entries_expire_after_ttl():
    clock = Clock()
    cache = ResultCache(max_entries=4, ttl_seconds=10, clock=clock)
    cache.put("a", 1)
    clock.now += 10.0
    assert cache.get("a") == 1
    clock.now += 0.01
    assert cache.get("a") is None
    assert len(cache) == 0


def test_least_recently_used_is_evicted():
    cache = ResultCache(max_entries=2, ttl_seconds=10, clock=Clock())
    cache.put("a", 1)
    cache.put("b", 2)
    cache.get("a")  # b is now the least recently used
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3


def test_invalidate_empties_and_zero_size_disables():
    cache = ResultCache(max_entries=2, ttl_seconds=10, clock=Clock())
    cache.put("a", 1)
    cache.invalidate()
    assert len(cache) == 0 and cache.get("a") is None
    off = ResultCache(max_entries=0, ttl_seconds=10, clock=Clock())
    off.put("a", 1)
    assert len(off) == 0


def test_holds_says_what_get_would_find_and_changes_nothing():
    clock = Clock()
    cache = ResultCache(max_entries=2, ttl_seconds=10, clock=clock)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.holds("a") and not cache.holds("c")
    cache.put("c", 3)  # "a" is still the least recently used: holds did not touch it
    assert not cache.holds("a") and cache.holds("b")
    assert (cache.hits, cache.misses) == (0, 0)
    clock.now += 10.01
    assert not cache.holds("b") and cache.get("b") is None
    disabled = ResultCache(max_entries=0, ttl_seconds=10, clock=clock)
    disabled.put("a", 1)
    assert not disabled.holds("a")
