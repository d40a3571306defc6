"""What a job runs with: the settings, the database, the engine's entry point and the per-process caches."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from service.db import Database
from service.settings import Settings, get_settings
from service.signatures import configured_public_key
from workers.claims import worker_identity
from workers.signing import ensure_key_pair

DEFAULT_KEY_NAME = "lethe-signing-key.pem"


@dataclass
class WorkerContext:
    settings: Settings  # every LETHE_* setting, the worker's included
    db: Database
    erase_fn: Any = None  # ease_engine.erasure.erase unless a test injects another
    worker_name: str = field(default_factory=worker_identity)  # host:pid, the claim on the requests it runs

    @property
    def artifact_dir(self) -> Path:
        return Path(self.settings.artifact_dir)

    def signing_key(self) -> Path:
        """LETHE_SIGNING_KEY; unset (embedded default): a key pair generated under the artifact dir."""
        if self.settings.signing_key is not None:
            return Path(self.settings.signing_key)
        private, _public = ensure_key_pair(self.artifact_dir / ".keys" / DEFAULT_KEY_NAME)
        return private

    def public_key(self) -> Path | None:
        """The key that checks signatures: LETHE_SIGNING_PUBLIC_KEY, else the signing key's public half."""
        if self.settings.signing_public_key is not None:
            return Path(self.settings.signing_public_key)
        private = self.settings.signing_key or self.artifact_dir / ".keys" / DEFAULT_KEY_NAME
        if not Path(private).is_file():  # no key: a signed base cannot be checked (the job fails on it)
            return None
        return configured_public_key(None, Path(private))


@lru_cache(maxsize=4)
def _database(url: str) -> Database:
    return Database(url)


@lru_cache(maxsize=1)
def data_cache():
    """The federation data and tokenised captions of recent jobs, kept for the life of the worker process."""
    from ease_engine.federation.data_cache import FederationDataCache

    return FederationDataCache(capacity=2)


def default_context() -> WorkerContext:
    settings = get_settings()
    return WorkerContext(settings, _database(settings.database_url))
