"""Worker settings, read from environment variables (the service's ``LETHE_*`` settings apply too).

- ``LETHE_ERASE_METHOD`` (default ``ease``): the unlearning method
- ``LETHE_ERASE_PARAMS_JSON`` (default ``{}``): its parameters, a JSON object (unknown keys fail the job)
- ``LETHE_GATES_JSON`` (default ``{}``): verification gates (``forget_margin``, ``retain_drop``,
  ``mia_margin``, ``max_split_items``, ``seed``), a JSON object
- ``LETHE_DEVICE`` (default ``cpu``): torch device of the erasure (``cuda`` on GPU workers)
- ``LETHE_VISIBILITY_TIMEOUT`` (default 21600 = 6 h): Redis broker visibility timeout in seconds; it
  must exceed the longest erasure, or a long job is delivered again (the task is idempotent anyway)
- ``LETHE_UNACKED_RESTORE_INTERVAL`` (default 60): seconds between sweeps that re-deliver messages of
  dead workers once ``LETHE_VISIBILITY_TIMEOUT`` has passed
- ``LETHE_LOCK_WAIT_SECONDS`` (default 60): how long a job waits for the per-model lock before it is
  retried later (another erasure of the same model is running)
- ``LETHE_TASK_MAX_RETRIES`` (default 8): retries for transient errors (database, broker, lock)
- ``LETHE_WORKER_METRICS_PORT`` (default 9808; 0 disables): the worker's Prometheus exporter
- ``LETHE_WORKER_METRICS_ADDR`` (default 0.0.0.0): the address it listens on
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class SettingsError(ValueError):
    pass


def _json_object(env: Mapping[str, str], name: str) -> dict[str, Any]:
    raw = env.get(name) or "{}"
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{name} is not valid JSON ({exc}): {raw[:200]!r}") from exc
    if not isinstance(value, dict):
        raise SettingsError(f"{name} must be a JSON object, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class WorkerSettings:
    method: str = "ease"
    params: dict[str, Any] = field(default_factory=dict)
    gates: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    visibility_timeout: int = 6 * 3600
    unacked_restore_interval: int = 60
    lock_wait_seconds: float = 60.0
    max_retries: int = 8
    metrics_port: int = 9808
    metrics_addr: str = "0.0.0.0"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if env is None else env
        return cls(
            method=env.get("LETHE_ERASE_METHOD") or "ease",
            params=_json_object(env, "LETHE_ERASE_PARAMS_JSON"),
            gates=_json_object(env, "LETHE_GATES_JSON"),
            device=env.get("LETHE_DEVICE") or "cpu",
            visibility_timeout=int(env.get("LETHE_VISIBILITY_TIMEOUT") or 6 * 3600),
            unacked_restore_interval=int(env.get("LETHE_UNACKED_RESTORE_INTERVAL") or 60),
            lock_wait_seconds=float(env.get("LETHE_LOCK_WAIT_SECONDS") or 60.0),
            max_retries=int(env.get("LETHE_TASK_MAX_RETRIES") or 8),
            metrics_port=int(env.get("LETHE_WORKER_METRICS_PORT") or 9808)
            if env.get("LETHE_WORKER_METRICS_PORT") != "0" else 0,
            metrics_addr=env.get("LETHE_WORKER_METRICS_ADDR") or "0.0.0.0",
        )
