"""Plain helpers for the worker tests (a module name of its own, so it cannot clash with other test
directories' conftest or helper modules)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.db_helpers import bearer, reset_tables  # noqa: F401  (re-exported)

REDIS_URL = os.environ.get("LETHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
MODEL = "clip-w"


def write_fake_version(directory: Path, clients: dict[str, list[str]] | None = None) -> Path:
    """A version directory the service accepts (the fake engine copies it)."""
    clients = clients or {str(k): [f"p{k}-{i}" for i in range(5)] for k in range(3)}
    directory.mkdir(parents=True)
    (directory / "metadata.json").write_text(json.dumps({"kind": "federation", "config": {"name": "fake"}}))
    (directory / "clients.json").write_text(json.dumps(
        {"clients": {cid: {"n_samples": len(pairs), "pair_ids": pairs, "excluded": False}
                     for cid, pairs in clients.items()}}))
    (directory / "open_clip_model.safetensors").write_bytes(os.urandom(256))
    return directory
