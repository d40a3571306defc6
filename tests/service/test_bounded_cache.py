"""The one bounded cache behind the token cache and the integrity check's cache."""

import threading

import pytest

from service.bounded_cache import BoundedCache


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_oldest_stored_is_dropped_first_and_a_restore_refreshes():
    cache = BoundedCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 3)  # stored again: now the newest
    cache.put("c", 4)
    assert cache.get("b") is None and cache.get("a") == 3 and cache.get("c") == 4
    assert len(cache) == 2


def test_entries_expire_after_their_ttl_and_zero_ttl_stores_nothing():
    clock = FakeClock()
    cache = BoundedCache(8, clock=clock)
    cache.put("token", "alice", ttl=30)
    cache.put("forever", "bob")
    cache.put("off", "carol", ttl=0)
    assert cache.get("off") is None
    clock.now += 29.9
    assert cache.get("token") == "alice"
    clock.now += 0.2
    assert cache.get("token") is None and cache.get("forever") == "bob"
    assert len(cache) == 1  # the expired entry was removed, not only hidden
    cache.clear()
    assert cache.get("forever") is None


def test_capacity_holds_under_concurrent_writers():
    cache = BoundedCache(16)

    def write(offset: int) -> None:
        for i in range(500):
            cache.put((offset, i), i)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 16


def test_a_cache_without_room_is_refused():
    with pytest.raises(ValueError, match="capacity"):
        BoundedCache(0)
