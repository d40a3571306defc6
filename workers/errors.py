"""Which errors are worth retrying (the pipeline leaves such a request ``running``; the task retries it)."""

from __future__ import annotations

from workers.locks import LockTimeout


class TransientError(RuntimeError):
    """Worth retrying later (the job left the request ``running``; a retry resumes it)."""


class IntegrityFailure(RuntimeError):
    """The base version's files are not what was registered (``service.integrity``); ``check`` says which
    check failed. The request ends ``failed`` with reason ``integrity_error``."""

    def __init__(self, check: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.check, self.details = check, details or {}


def is_transient(exc: BaseException) -> bool:
    """Database, broker and lock time-outs: yes; anything else (``UnlearningError``, bad settings, a signing
    failure): no, the request ends ``failed``."""
    from kombu.exceptions import OperationalError as KombuOperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

    if isinstance(exc, TransientError | LockTimeout | OperationalError | InterfaceError | DisconnectionError
                  | RedisConnectionError | RedisTimeoutError | KombuOperationalError | ConnectionError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def failure_reason(exc: BaseException) -> str:
    """The ``lethe_worker_failures_total`` reason of a permanent error (``workers.metrics.FAILURE_REASONS``)."""
    from ease_engine.unlearning.base import UnlearningError
    from workers.signing import SigningError

    if isinstance(exc, SigningError):
        return "signing_error"
    if isinstance(exc, IntegrityFailure):
        return "integrity_error"
    if isinstance(exc, UnlearningError):
        return "engine_error"
    return "internal_error"
