"""The one bounded cache behind the token cache and the integrity check's cache."""

import pytest

from service.bounded_cache import BoundedCache


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_oldest_stored_is_dropped_first_and_a_restore_refreshes():
    cache = BoundedCache(2)
    cache.put("a", 1, ttl=None)
    cache.put("b", 2, ttl=None)
    cache.put("a", 3, ttl=None)  # stored again: now the newest
    cache.put("c", 4, ttl=None)
    assert cache.get("b") is None and cache.get("a") == 3 and cache.get("c") == 4
    assert len(cache) == 2


def test_entries_expire_after_their_ttl_and_zero_ttl_stores_nothing():
    clock = FakeClock()
    cache = BoundedCache(8, clock=clock)
    cache.put("token", "alice", ttl=30)
    cache.put("forever", "bob", ttl=None)
    cache.put("off", "carol", ttl=0)
    assert cache.get("off") is None
    clock.now += 29.9
    assert cache.get("token") == "alice"
    clock.now += 0.2
    assert cache.get("token") is None and cache.get("forever") == "bob"
    assert len(cache) == 1  # the expired entry was removed, not only hidden
    cache.clear()
    assert cache.get("forever") is None


def test_a_cache_without_room_is_refused():
    with pytest.raises(ValueError, match="capacity"):
        BoundedCache(0)


def test_the_ttl_must_be_said():
    with pytest.raises(TypeError):
        BoundedCache(2).put("token", "alice")  # forgetting the TTL must not cache a token forever
