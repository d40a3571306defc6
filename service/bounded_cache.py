"""A small thread-safe, bounded, least-recently-stored cache with optional expiry, per process.

The API's token cache (``service.auth``) and the integrity check's "already verified" cache
(``service.integrity``) are both this: at most ``capacity`` entries, the oldest stored dropped first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class BoundedCache(Generic[V]):
    def __init__(self, capacity: int, clock=time.monotonic):
        if capacity < 1:
            raise ValueError("a bounded cache needs a capacity of at least 1")
        self.capacity = capacity
        self._clock = clock
        self._items: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        """The value stored under ``key``, or None when there is none or it has expired."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            if item[0] <= self._clock():
                del self._items[key]
                return None
            return item[1]

    def put(self, key: Hashable, value: V, *, ttl: float | None) -> None:
        """Store ``value`` for ``ttl`` seconds (None: until evicted or cleared, said explicitly; 0 or less: not
        at all)."""
        if ttl is not None and ttl <= 0:
            return
        expires = float("inf") if ttl is None else self._clock() + ttl
        with self._lock:
            self._items[key] = (expires, value)
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
