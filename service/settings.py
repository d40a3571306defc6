"""Every ``LETHE_*`` setting of the API, the outbox dispatcher and the workers, in one typed class.

``Settings`` (pydantic-settings) reads the environment variable ``LETHE_<FIELD>`` for each field (the two
JSON fields: ``LETHE_ERASE_PARAMS_JSON``, ``LETHE_GATES_JSON``); an empty value means the default. A bad
value is refused with a ``SettingsError`` that names the variable. ``get_settings()`` is the process's
instance (cached); tests build their own (``Settings(...)``, or ``Settings.from_env({...})`` from a mapping
only). The variable list below, ``docs/settings.md`` and the ``--help`` of ``lethe serve``, ``lethe worker``
and ``lethe dispatcher`` are generated from the class (``python -m service.settings [--markdown]``).

This module imports neither torch nor the workers: the API image reads it too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from lethe_format import strict_json_loads

ENV_PREFIX = "LETHE_"
DEFAULT_DATABASE_URL = "sqlite:///./var/lethe.db"
DEFAULT_BROKER_URL = "memory://"

_API, _WORKER = "API and outbox dispatcher", "workers"
_ONLY_GIVEN: ContextVar[bool] = ContextVar("lethe_settings_only_given", default=False)

JsonObject = Annotated[dict[str, Any], NoDecode]  # parsed by the validator below, to name the variable


class SettingsError(ValueError):
    """A ``LETHE_*`` variable has a value the settings refuse (the message names it)."""


def _strict_json(text: str) -> Any:
    """JSON as the version format reads it (no NaN or Infinity: the values end up in JSON columns)."""
    try:
        return strict_json_loads(text)
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None


def _setting(default: Any = None, description: str = "", section: str = _API, **constraints: Any) -> Any:
    return Field(default, description=description, json_schema_extra={"section": section}, **constraints)


class Settings(BaseSettings):
    """The settings of every Lethe process; one field per ``LETHE_*`` variable."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="forbid", frozen=True,
                                      populate_by_name=True)

    database_url: str = _setting(DEFAULT_DATABASE_URL, "SQLAlchemy URL of the database (production: "
                                 "postgresql+psycopg://user@host/db)")
    broker_url: str = _setting(DEFAULT_BROKER_URL, "Celery broker (production: redis://host:6379/0); `lethe serve` "
                               "replaces memory:// (one process only) by a local SQLite transport")
    result_backend: str | None = _setting(None, "Celery result backend (results are not needed)")
    task_queue: str | None = _setting(None, "queue of the erasure task, for the API and the workers (unset: "
                                      "Celery's default queue, celery)")
    artifact_dir: Path = _setting(Path("./artifacts"), "root of the model version directories; new versions go "
                                  "to <model>/v<N>")
    signing_key: Path | None = _setting(None, "EC private key (PEM) that signs new versions (unset: a key pair "
                                        "generated once, by `lethe serve` in <var>/keys, by a bare worker under "
                                        "<artifact dir>/.keys); set but missing: jobs fail at signing")
    signing_public_key: Path | None = _setting(None, "public key served at /v1/keys (`lethe serve`: <key>.pub)")
    max_body_bytes: int = _setting(1024 * 1024, "larger request bodies are answered 413", gt=0)
    outbox_poll_seconds: float = _setting(5.0, "outbox dispatcher poll period, a fallback to wake-ups (a POST, "
                                          "Postgres NOTIFY); 0: no dispatcher thread in the API (the POST route "
                                          "sends its request after the answer)", ge=0)
    dispatcher_in_api: bool = _setting(True, "1: the API runs the outbox dispatcher as a thread; 0: a separate "
                                       "`lethe dispatcher` process sends, the API sends nothing")
    dispatcher_metrics_port: int = _setting(9809, "Prometheus exporter port of `lethe dispatcher` (0: off)",
                                            ge=0, le=65535)
    dispatcher_metrics_addr: str = _setting("127.0.0.1", "the address that exporter listens on")
    send_on_submit: bool = _setting(True, "wake the dispatcher right after a POST commits (0: only its poll "
                                    "sends)")
    auth_cache_seconds: float = _setting(2.0, "a valid token is remembered this long per process (a revocation "
                                         "reaches other processes within that time); 0: every call looks it up",
                                         ge=0)
    auto_migrate: bool = _setting(False, "run the database migrations when the API starts (`lethe serve` "
                                  "migrates anyway unless --no-migrate)")
    public_base_url: str | None = _setting(None, "prefix of absolute links in answers, http(s)://host[:port] "
                                           "(unset: relative links)")
    metrics_token_file: Path | None = _setting(None, "a file holding the bearer token that Prometheus sends to "
                                               "/metrics and /readyz (besides an admin token, the only credential "
                                               "they accept; unset: admin tokens only)")
    worker_stale_seconds: float = _setting(45.0, "a queued or running request whose worker has not written its "
                                           "heartbeat for this long is held by no live worker: the dispatcher's "
                                           "sweep queues it again", gt=0)
    sweep_seconds: float = _setting(10.0, "how often the outbox dispatcher sweeps for requests that no live "
                                    "worker holds", gt=0)
    max_worker_losses: int = _setting(3, "a request whose worker died this many times ends failed (reason "
                                      "worker_lost) instead of being queued again", ge=1)
    queued_resend_seconds: float = _setting(120.0, "a queued request that no worker has acknowledged for this "
                                            "long is sent to the broker again (the broker may have lost it); the "
                                            "wait doubles after each re-send", gt=0)
    queued_resend_max_seconds: float = _setting(900.0, "the longest wait between two re-sends of a queued "
                                                "request", gt=0)
    response_days: int = _setting(30, "days an erasure request has to be answered (GDPR Art. 12(3): one month); "
                                  "its due_at is the receipt plus this", gt=0, le=365)
    due_soon_days: int = _setting(7, "lethe_requests_due_soon counts the open requests due within this many days",
                                  ge=0, le=365)
    withdrawn_retention_days: float = _setting(30.0, "the files of a withdrawn version (it held erased data) are "
                                               "deleted this many days after the withdrawal (kept meanwhile for an "
                                               "admin's rollback)", ge=0)
    retention_sweep_seconds: float = _setting(3600.0, "how often the outbox dispatcher runs the retention sweep "
                                              "of withdrawn versions (0: never; `lethe-admin versions sweep` runs "
                                              "it by hand)", ge=0)
    webhook_max_attempts: int = _setting(8, "deliveries of a webhook before it is marked failed (back-off 10 s "
                                         "doubling to 1 h)", ge=1, le=50)
    webhook_timeout_seconds: float = _setting(5.0, "HTTP timeout of one webhook delivery", gt=0, le=60)
    git_commit: str | None = _setting(None, "the commit lethe_build_info reports (the images set it from their "
                                      "build argument GIT_COMMIT; unset: the checkout's HEAD, if any)")

    erase_method: str = _setting("ease", "unlearning method of the workers (`lethe methods` lists them)", _WORKER,
                                 min_length=1)
    erase_params: JsonObject = Field(
        default_factory=dict, validation_alias="LETHE_ERASE_PARAMS_JSON",
        description="the method's parameters, a JSON object (unknown keys fail the job)",
        json_schema_extra={"section": _WORKER})
    gates: JsonObject = Field(
        default_factory=dict, validation_alias="LETHE_GATES_JSON",
        description="verification gates, a JSON object (z, r1_tolerance, mia_tolerance, residual_max, probe_margin, "
                    "utility_keep, max_split_items, ... of ease_engine.verification.gates.GateConfig; {}: the "
                    "engine's defaults; an unknown key fails the job)",
        json_schema_extra={"section": _WORKER})
    device: str = _setting("cpu", "torch device of the erasure (cuda on GPU workers)", _WORKER, min_length=1)
    visibility_timeout: int = _setting(6 * 3600, "Redis broker: seconds before an unacknowledged job is delivered "
                                       "again; keep it above the longest erasure", _WORKER, gt=0)
    unacked_restore_interval: int = _setting(60, "seconds between the sweeps that re-deliver a dead worker's job",
                                             _WORKER, gt=0)
    lock_wait_seconds: float = _setting(60.0, "how long a job waits for its model's lock (another erasure of the "
                                        "model runs) before the task is retried later", _WORKER, ge=0)
    task_max_retries: int = _setting(8, "retries of transient errors (database, broker), back-off 5 s doubling to "
                                     "5 min; waiting for a model lock spends none", _WORKER, ge=0)
    lock_retry_seconds: float = _setting(5.0, "a job that waited LETHE_LOCK_WAIT_SECONDS for its model's lock is "
                                         "tried again this much later, without spending a retry", _WORKER, gt=0)
    heartbeat_seconds: float = _setting(5.0, "how often a worker writes the heartbeat of the request it holds "
                                        "(keep it well under LETHE_WORKER_STALE_SECONDS)", _WORKER, gt=0)
    worker_metrics_port: int = _setting(9808, "the worker's Prometheus exporter port (0: off; `lethe serve` gives "
                                        "worker i the port + i)", _WORKER, ge=0, le=65535)
    worker_metrics_addr: str = _setting("127.0.0.1", "the address that exporter listens on (docker-compose: "
                                        "0.0.0.0, for Prometheus)", _WORKER)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings,) if _ONLY_GIVEN.get() else (init_settings, env_settings)

    @model_validator(mode="after")
    def _heartbeat_under_staleness(self) -> Settings:
        if self.heartbeat_seconds * 3 > self.worker_stale_seconds:
            raise ValueError(f"LETHE_HEARTBEAT_SECONDS={self.heartbeat_seconds:g} must be at most a third of "
                             f"LETHE_WORKER_STALE_SECONDS={self.worker_stale_seconds:g}, or a live worker's request "
                             "is taken for lost")
        if self.queued_resend_max_seconds < self.queued_resend_seconds:
            raise ValueError("LETHE_QUEUED_RESEND_MAX_SECONDS must be at least LETHE_QUEUED_RESEND_SECONDS")
        return self

    @field_validator("erase_params", "gates", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        value = _strict_json(value) if isinstance(value, str) else value
        if not isinstance(value, dict):
            raise ValueError(f"must be a JSON object, got {type(value).__name__}")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value)
        except ArgumentError:
            raise ValueError("not a SQLAlchemy URL (e.g. postgresql+psycopg://user@host/db)") from None
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError("not a broker URL (e.g. redis://host:6379/0)")
        return value

    @field_validator("artifact_dir", "signing_key", "signing_public_key", "metrics_token_file")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        value = (value or "").rstrip("/")
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value or None

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of a field."""
        alias = cls.model_fields[field].validation_alias
        return alias if isinstance(alias, str) else f"{ENV_PREFIX}{field.upper()}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """From the process environment (``env`` None) or from ``env`` alone; ``SettingsError`` names the
        variable of a bad value."""
        if env is None:
            return _checked(cls)
        names = {cls.env_name(field): field for field in cls.model_fields}
        given = {names[name]: value for name, value in env.items() if name in names and value != ""}
        token = _ONLY_GIVEN.set(True)
        try:
            return _checked(cls, **given)
        finally:
            _ONLY_GIVEN.reset(token)

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields changed (validated like the rest; the environment is not read again)."""
        token = _ONLY_GIVEN.set(True)
        try:
            return _checked(type(self), **{**self.model_dump(), **changes})
        finally:
            _ONLY_GIVEN.reset(token)


def _checked(cls: type[Settings], **values: Any) -> Settings:
    try:
        return cls(**values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            if not error["loc"]:  # a rule across several settings: its message names them
                problems.append(error["msg"].removeprefix("Value error, "))
                continue
            where = str(error["loc"][0])
            name = cls.env_name(where) if where in cls.model_fields else where
            shown = repr(error.get("input"))[:200]
            problems.append(f"{name}={shown}: {error['msg'].removeprefix('Value error, ')}")
        raise SettingsError("invalid Lethe settings: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings from the environment (cached; tests build their own)."""
    return Settings.from_env()


# --------------------------------------------------------------------------- the generated documentation


def _default_text(field: str) -> str:
    info = Settings.model_fields[field]
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Path) and not value.is_absolute():
        return f"./{value}"
    return str(value)


def _sections() -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    for field, info in Settings.model_fields.items():
        sections.setdefault((info.json_schema_extra or {})["section"], []).append(field)
    return sections


def environment_help() -> str:
    """The settings as the epilog of a command's ``--help`` (click keeps ``\\b`` paragraphs as written)."""
    width = max(len(Settings.env_name(field)) for field in Settings.model_fields)
    lines = ["Settings (environment variables; an empty value means the default):"]
    for section, fields in _sections().items():
        lines += ["", "\b", f"{section}:"]
        lines += [f"  {Settings.env_name(field):<{width}}  {Settings.model_fields[field].description} "
                  f"(default: {_default_text(field)})" for field in fields]
    return "\n".join(lines) + "\n"


def _markdown_default(field: str) -> str:
    text = _default_text(field)
    return text if text == "unset" else f"`{text}`"


def _escape(text: str) -> str:
    return text.replace("<", "&lt;").replace(">", "&gt;")


def settings_markdown() -> str:
    """``docs/settings.md``: one table per section."""
    lines = ["# Settings", "",
             "Generated from `service.settings.Settings` by `python -m service.settings --markdown > "
             "docs/settings.md` (a test checks that it is current). Every Lethe process reads these "
             "environment variables; an empty value means the default, a bad value stops the process with an "
             "error that names the variable."]
    for section, fields in _sections().items():
        lines += ["", f"## {section[0].upper()}{section[1:]}", "", "| variable | default | meaning |", "|---|---|---|"]
        lines += [f"| `{Settings.env_name(field)}` | {_markdown_default(field)} | "
                  f"{_escape(Settings.model_fields[field].description)} |" for field in fields]
    return "\n".join(lines) + "\n"


__doc__ = f"{__doc__}\n{environment_help().replace(chr(8), '').rstrip()}\n"


if __name__ == "__main__":
    import sys

    print(settings_markdown() if "--markdown" in sys.argv[1:] else environment_help().replace("\b\n", ""), end="")
