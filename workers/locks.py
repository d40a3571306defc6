"""One erasure at a time per model, across every worker.

- Postgres: a session-level advisory lock keyed by the model name, held on a dedicated connection
  for the whole job. A worker that dies (even ``kill -9``) closes its connection and the lock goes
  with it, so a re-delivered job never waits on a dead holder.
- Anything else (the SQLite embedded default): an exclusive ``flock`` on
  ``<artifact dir>/.locks/<model>.lock``, which also dies with its process.

``model_lock(...)`` is a context manager; it raises ``LockTimeout`` after ``wait_seconds``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import text

from service.db import Database, is_sqlite

POLL_SECONDS = 0.25


class LockTimeout(TimeoutError):
    """Another erasure of the same model holds the lock (the job is retried later)."""


def advisory_key(model_name: str) -> int:
    """A signed 64-bit key from the model name (stable across processes and versions)."""
    digest = hashlib.sha256(f"lethe.erase:{model_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def _postgres_lock(db: Database, model_name: str, wait_seconds: float) -> Iterator[None]:
    key = advisory_key(model_name)
    connection = db.engine.connect()
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            acquired = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar_one()
            connection.commit()  # no transaction left open while we hold the lock
            if acquired:
                break
            if time.monotonic() >= deadline:
                raise LockTimeout(f"model '{model_name}' is locked by another erasure (waited {wait_seconds:.0f} s)")
            time.sleep(POLL_SECONDS)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a broken connection released the lock already
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
    finally:
        connection.close()


def _lock_file(lock_dir: Path, model_name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name)[:100]
    digest = hashlib.sha256(model_name.encode()).hexdigest()[:8]
    lock_dir.mkdir(parents=True, exist_ok=True)
    return lock_dir / f"{safe}-{digest}.lock"


@contextlib.contextmanager
def _file_lock(lock_dir: Path, model_name: str, wait_seconds: float) -> Iterator[None]:
    with _lock_file(lock_dir, model_name).open("a+") as handle:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"model '{model_name}' is locked by another erasure (waited {wait_seconds:.0f} s)"
                    ) from None
                time.sleep(POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def model_lock(db: Database, artifact_dir: Path, model_name: str, wait_seconds: float):
    if is_sqlite(db.url):
        return _file_lock(Path(artifact_dir) / ".locks", model_name, wait_seconds)
    return _postgres_lock(db, model_name, wait_seconds)
