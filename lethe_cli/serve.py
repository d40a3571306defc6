"""``lethe serve``: the API (uvicorn) and Celery worker(s) as child processes of one command.

The children get the parent's environment, completed for the embedded default:

- ``LETHE_BROKER_URL`` unset or ``memory://`` (which cannot cross processes): a SQLite-backed local
  transport ``sqla+sqlite:///<var>/celery-broker.sqlite`` shared by the API and the worker;
- ``LETHE_SIGNING_KEY`` unset: a key pair generated once at ``<var>/keys/lethe-signing-key.pem``
  (``LETHE_SIGNING_PUBLIC_KEY`` is set to its ``.pub``, served at ``/v1/keys``).

Migrations run first (``--migrate``, default on). Ctrl-C (or SIGTERM) stops the children with
SIGTERM: the API closes, the worker finishes its current job (warm shutdown) within ``--grace``
seconds, then it is killed; a killed job is re-delivered and started over (it is idempotent). A
second Ctrl-C kills at once. If one child dies, the others are stopped and its exit code returned.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

LOCAL_BROKER_NAME = "celery-broker.sqlite"
KEY_NAME = "lethe-signing-key.pem"


def var_dir(database_url: str) -> Path:
    """Where the embedded default keeps its state: beside a SQLite database, else ./var."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).expanduser().resolve().parent
    return Path("var").resolve()


def child_environment(env: Mapping[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """The children's environment and notes on what was filled in."""
    from service.settings import Settings
    from workers.signing import ensure_key_pair, public_key_path

    env = dict(os.environ if env is None else env)
    settings = Settings.from_env(env)
    broker, key, public_key = (Settings.env_name(field) for field in ("broker_url", "signing_key",
                                                                       "signing_public_key"))
    notes = []
    state = var_dir(settings.database_url)
    if settings.broker_url.startswith("memory://"):
        state.mkdir(parents=True, exist_ok=True)
        env[broker] = f"sqla+sqlite:///{state / LOCAL_BROKER_NAME}"
        notes.append(f"broker: local SQLite transport {env[broker]} (set {broker} for Redis)")
    if settings.signing_key is None:
        private, public = ensure_key_pair(state / "keys" / KEY_NAME)
        env[key] = str(private)
        if settings.signing_public_key is None:
            env[public_key] = str(public)
        notes.append(f"signing key: {private} (public: {public})")
    elif settings.signing_public_key is None and public_key_path(settings.signing_key).is_file():
        env[public_key] = str(public_key_path(settings.signing_key))
    return env, notes


def api_command(host: str, port: int, log_level: str = "info") -> list[str]:
    return [sys.executable, "-m", "uvicorn", "service.app:create_app", "--factory", "--host", host,
            "--port", str(port), "--log-level", log_level]


def dispatcher_command() -> list[str]:
    return [sys.executable, "-m", "service.dispatcher"]


def dispatcher_placement(choice: str, database_url: str) -> str:
    """Where the outbox dispatcher runs: ``api`` (a thread of the API) or ``process`` (its own process);
    ``auto`` is ``process`` on Postgres (notifications reach it from any API process) and ``api`` on
    SQLite (the embedded default: one process fewer, nothing to notify)."""
    if choice not in {"auto", "api", "process"}:
        raise ValueError(f"--dispatcher must be auto, api or process, not {choice!r}")
    if choice != "auto":
        return choice
    return "process" if make_url(database_url).get_backend_name() == "postgresql" else "api"


def worker_command(queue: str | None, pool: str = "solo", concurrency: int = 1, log_level: str = "info",
                   name: str = "lethe-worker") -> list[str]:
    command = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "--pool", pool,
               "--loglevel", log_level.upper(), "-n", f"{name}@%h", "--without-gossip", "--without-mingle"]
    if pool != "solo":
        command += ["--concurrency", str(concurrency)]
    if queue:
        command += ["-Q", queue]
    return command


@dataclass
class Child:
    name: str
    process: subprocess.Popen


class Supervisor:
    """Start children in their own sessions (so Ctrl-C reaches only us) and stop them cleanly."""

    def __init__(self, grace_seconds: float = 30.0, echo=print):
        self.grace, self.echo = grace_seconds, echo
        self.children: list[Child] = []
        self._stopping = False

    def start(self, name: str, command: list[str], env: dict[str, str]) -> Child:
        process = subprocess.Popen(command, env=env, start_new_session=True)
        child = Child(name, process)
        self.children.append(child)
        self.echo(f"started {name} (pid {process.pid}): {' '.join(command[1:])}")
        return child

    def stop(self, kill: bool = False) -> None:
        for child in self.children:
            if child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + (0 if kill else self.grace)
        for child in self.children:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                child.process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                self.echo(f"{child.name} did not stop within {self.grace:.0f} s; killing it")
                child.process.kill()
                child.process.wait()

    def run(self) -> int:
        """Wait until a child exits or we are interrupted; returns the exit code."""

        def on_term(_signum, _frame):
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, on_term)
        try:
            while True:
                for child in self.children:
                    code = child.process.poll()
                    if code is not None:
                        self.echo(f"{child.name} exited with code {code}; stopping the others")
                        self.stop()
                        return code or 1
                time.sleep(0.5)
        except KeyboardInterrupt:
            self.echo("stopping (Ctrl-C again to kill at once) ...")
            try:
                self.stop()
            except KeyboardInterrupt:
                self.stop(kill=True)
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous)
