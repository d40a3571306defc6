"""Which errors are worth retrying (the pipeline leaves such a request ``running``; the task retries it)."""

from __future__ import annotations

from workers.locks import LockTimeout


class TransientError(RuntimeError):
    """Worth retrying later (the job left the request ``running``; a retry resumes it)."""


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
