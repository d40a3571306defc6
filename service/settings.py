"""Service settings, read from environment variables (prefix ``LETHE_``).

- ``LETHE_DATABASE_URL`` (default sqlite:///./var/lethe.db): SQLAlchemy URL (Postgres: postgresql+psycopg://)
- ``LETHE_BROKER_URL`` (default memory://): Celery broker (production: redis://host:6379/0)
- ``LETHE_RESULT_BACKEND`` (unset): Celery result backend, for the worker
- ``LETHE_TASK_QUEUE`` (unset: Celery's default queue): queue the erasure task is sent to
- ``LETHE_ARTIFACT_DIR`` (default ./artifacts): root of all model version directories
- ``LETHE_SIGNING_KEY`` (unset): path of the private signing key (PEM), workers
- ``LETHE_SIGNING_PUBLIC_KEY`` (unset): path of the public key served at /v1/keys
- ``LETHE_MAX_BODY_BYTES`` (default 1048576): larger request bodies get 413
- ``LETHE_OUTBOX_POLL_SECONDS`` (default 5): outbox dispatcher period (a fallback: a POST wakes it, on
  Postgres through ``NOTIFY``); 0 disables the API's dispatcher thread (then the POST route sends its
  request after the answer)
- ``LETHE_DISPATCHER_IN_API`` (default 1): run the outbox dispatcher as a thread of the API; 0 when it
  runs as its own process (``lethe dispatcher``), so the API sends nothing itself
- ``LETHE_DISPATCHER_METRICS_PORT`` (default 9809; 0: off) and ``LETHE_DISPATCHER_METRICS_ADDR`` (default
  127.0.0.1): the Prometheus exporter of the dispatcher process (``service.dispatcher``)
- ``LETHE_SEND_ON_SUBMIT`` (default 1): send the task right after POST commits
- ``LETHE_AUTH_CACHE_SECONDS`` (default 2): a valid token is remembered this long per process (a
  revocation reaches other processes within that time); 0 looks every token up
- ``LETHE_AUTO_MIGRATE`` (default 0): run Alembic migrations when the API starts
- ``LETHE_PUBLIC_BASE_URL`` (unset): prefix for absolute links; relative otherwise
- ``LETHE_GIT_COMMIT`` (unset): the commit ``lethe_build_info`` reports (``service.buildinfo``; the images set
  it from their build argument ``GIT_COMMIT``); unset, the git checkout's ``HEAD`` if there is one
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

DEFAULT_DATABASE_URL = "sqlite:///./var/lethe.db"
DEFAULT_BROKER_URL = "memory://"
ERASE_TASK_NAME = "lethe.erase"


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _optional_path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    broker_url: str = DEFAULT_BROKER_URL
    result_backend: str | None = None
    task_queue: str | None = None
    artifact_dir: Path = field(default_factory=lambda: Path("./artifacts"))
    signing_key: Path | None = None
    signing_public_key: Path | None = None
    max_body_bytes: int = 1024 * 1024
    outbox_poll_seconds: float = 5.0
    dispatcher_in_api: bool = True
    send_on_submit: bool = True
    auto_migrate: bool = False
    auth_cache_seconds: float = 2.0
    public_base_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            database_url=env.get("LETHE_DATABASE_URL") or DEFAULT_DATABASE_URL,
            broker_url=env.get("LETHE_BROKER_URL") or DEFAULT_BROKER_URL,
            result_backend=env.get("LETHE_RESULT_BACKEND") or None,
            task_queue=env.get("LETHE_TASK_QUEUE") or None,
            artifact_dir=Path(env.get("LETHE_ARTIFACT_DIR") or "./artifacts").expanduser(),
            signing_key=_optional_path(env.get("LETHE_SIGNING_KEY")),
            signing_public_key=_optional_path(env.get("LETHE_SIGNING_PUBLIC_KEY")),
            max_body_bytes=int(env.get("LETHE_MAX_BODY_BYTES") or 1024 * 1024),
            outbox_poll_seconds=float(env.get("LETHE_OUTBOX_POLL_SECONDS") or 5.0),
            dispatcher_in_api=_flag(env.get("LETHE_DISPATCHER_IN_API"), True),
            send_on_submit=_flag(env.get("LETHE_SEND_ON_SUBMIT"), True),
            auto_migrate=_flag(env.get("LETHE_AUTO_MIGRATE"), False),
            auth_cache_seconds=float(env.get("LETHE_AUTH_CACHE_SECONDS") or 2.0),
            public_base_url=(env.get("LETHE_PUBLIC_BASE_URL") or "").rstrip("/") or None,
        )

    def with_overrides(self, **changes) -> Settings:
        return replace(self, **changes)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings from the environment (cached; tests build their own)."""
    return Settings.from_env()
