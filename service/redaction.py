"""What a requester may see of a server-side error: no server paths.

Failure messages are recorded on the request (``failure.message``) and shown by the API and the report;
the worker's log keeps the full text. ``scrub_paths`` replaces every absolute file path by ``<path>``
(URLs and relative names are left alone), ``scrub`` does it for every string of a JSON-like value.
"""

from __future__ import annotations

import re
from typing import Any

# an absolute path: a '/' that does not follow a word character, a dot, a colon or another '/' (so URLs and
# relative paths are kept), up to the next blank, quote, bracket or separator
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/[^\s'\"`()\[\]{}<>,;]*")
PLACEHOLDER = "<path>"


def scrub_paths(text: str) -> str:
    return _ABSOLUTE_PATH.sub(PLACEHOLDER, text)


def scrub(value: Any) -> Any:
    """``value`` with ``scrub_paths`` applied to every string in it (dicts, lists and tuples walked)."""
    if isinstance(value, str):
        return scrub_paths(value)
    if isinstance(value, dict):
        return {key: scrub(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    return value
