"""The federation's data and tokenised captions, kept across jobs of one process.

Loading a federation's pairs (rendering ``scenes``, decoding a manifest) and tokenising every
caption cost seconds per job. A worker erases from versions of the same federation again and
again, so it keeps the last few ``(train, test, captions)`` here, keyed by what determines them:
the data and partition config and the tokenizer (architecture and context length). Datasets and
captions are treated as read-only by everyone who receives them.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict

from ease_engine.data.holdout import FederationData
from ease_engine.federation.config import FederationConfig, load_federation_data
from ease_engine.federation.training import EncodedCaptions
from ease_engine.models.factory import ClipBundle

Prepared = tuple[FederationData, EncodedCaptions]  # captions of data.train


def data_key(config: FederationConfig, bundle: ClipBundle) -> str:
    payload = {
        "data": config.data.model_dump(mode="json"),
        "partition": config.partition.model_dump(mode="json"),
        "holdout": config.holdout.model_dump(mode="json"),
        "tokenizer": [config.model.architecture, bundle.context_length],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class FederationDataCache:
    """At most ``capacity`` prepared data sets, least recently used dropped first (0: no caching)."""

    def __init__(self, capacity: int = 2):
        self.capacity = capacity
        self._items: OrderedDict[str, Prepared] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, config: FederationConfig, bundle: ClipBundle) -> Prepared:
        key = data_key(config, bundle)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        data = load_federation_data(config)
        prepared = (data, EncodedCaptions.build(bundle, data.train))
        with self._lock:
            self.misses += 1
            if self.capacity > 0:
                self._items[key] = prepared
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
        return prepared
