"""The ``lethe`` command: the engine's commands (``lethe_cli.engine``), the service's (serve, worker,
dispatcher, demo, signing-key, here) and the admin sub-apps (``lethe token``, ``lethe db``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ease_engine.configs import DEFAULT_CONFIG
from lethe_cli import compliance as compliance_commands
from lethe_cli.admin import db_app, token_app
from lethe_cli.engine import HELP
from lethe_cli.engine import app as engine_app
from service.settings import Settings, SettingsError, environment_help, get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP)
app.registered_commands.extend(engine_app.registered_commands)
app.add_typer(token_app, name="token", help="API tokens (stored hashed; the plaintext is shown once)")
app.add_typer(db_app, name="db", help="database schema (Alembic migrations)")
compliance_commands.mount(app)  # verify-certificate, audit export|verify, versions sweep|restore

ENVIRONMENT_HELP = environment_help()  # generated from service.settings.Settings


def _settings() -> Settings:
    """The process's settings; a bad LETHE_* value is a usage error that names the variable."""
    try:
        return get_settings()
    except SettingsError as exc:
        raise typer.BadParameter(str(exc)) from exc


@app.command(epilog=ENVIRONMENT_HELP)
def serve(
    host: Annotated[str, typer.Option(help="API address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port")] = 8000,
    workers: Annotated[int, typer.Option(min=0, help="Celery worker processes (0: API only)")] = 1,
    api: Annotated[bool, typer.Option(help="start the API")] = True,
    migrate: Annotated[bool, typer.Option(help="run the database migrations first")] = True,
    pool: Annotated[str, typer.Option(help="Celery pool: solo (one job per process) or prefork")] = "solo",
    log_level: Annotated[str, typer.Option(help="log level of API and workers")] = "info",
    grace: Annotated[float, typer.Option(help="seconds a worker may take to finish its job on Ctrl-C")] = 30.0,
    dispatcher: Annotated[str, typer.Option(
        help="where the outbox dispatcher runs: api (a thread of the API), process (its own), or auto "
             "(process on Postgres, api on SQLite)")] = "auto",
) -> None:
    """Run the service: the API (uvicorn service.app:create_app --factory), the outbox dispatcher and
    Celery worker(s) as child processes, configured from LETHE_* environment variables. Ctrl-C stops
    them cleanly."""
    from lethe_cli.serve import (
        Supervisor,
        api_command,
        child_environment,
        dispatcher_command,
        dispatcher_placement,
        worker_command,
    )
    from service.db import upgrade_database

    try:
        env, notes = child_environment()
        settings = Settings.from_env(env)
    except SettingsError as exc:
        raise typer.BadParameter(str(exc)) from exc
    for note in notes:
        typer.echo(note)
    if migrate:
        upgrade_database(settings.database_url)
        typer.echo(f"database migrated: {settings.database_url}")
    try:
        placement = dispatcher_placement(dispatcher, settings.database_url)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    supervisor = Supervisor(grace_seconds=grace, echo=typer.echo)
    if api:
        if placement == "process":
            env[Settings.env_name("dispatcher_in_api")] = "0"
            supervisor.start("dispatcher", dispatcher_command(), env)
        supervisor.start("api", api_command(host, port, log_level), env)
    for index in range(workers):
        worker_env = dict(env)
        if index:  # one metrics port per worker process
            base = settings.worker_metrics_port
            worker_env[Settings.env_name("worker_metrics_port")] = str(base + index) if base else "0"
        supervisor.start(f"worker-{index}", worker_command(settings.task_queue, pool, 1, log_level,
                                                           f"lethe-worker-{index}-{os.getpid()}"), worker_env)
    if not supervisor.children:
        typer.echo("nothing to start (--no-api and --workers 0)")
        raise typer.Exit(2)
    if api:
        typer.echo(f"API on http://{host}:{port} (docs: /docs, metrics: /metrics); Ctrl-C stops")
    raise typer.Exit(supervisor.run())


@app.command("signing-key")
def signing_key(
    path: Annotated[str, typer.Argument(help="private key file (PEM); the public key goes to <path>.pub")],
    public_out: Annotated[Path | None, typer.Option(
        help="also write the public key here (e.g. a volume the API mounts, which must not see the private "
             "key)")] = None,
) -> None:
    """Create an EC P-256 signing key pair if PATH does not exist (an existing key is kept). Safe to run
    again and from several processes at once (docker-compose's one-shot `keygen` service runs it)."""
    from workers.signing import ensure_key_pair, write_public_key

    existed = Path(path).exists()
    private, public = ensure_key_pair(Path(path))
    typer.echo(f"{'kept' if existed else 'created'} {private}; public key {public}")
    if public_out is not None:
        typer.echo(f"public key also at {write_public_key(private, public_out)}")


@app.command(epilog=ENVIRONMENT_HELP)
def worker(
    pool: Annotated[str, typer.Option(help="Celery pool: solo (one job per process) or prefork")] = "solo",
    concurrency: Annotated[int, typer.Option(min=1, help="processes with --pool prefork")] = 1,
    log_level: Annotated[str, typer.Option(help="log level")] = "info",
) -> None:
    """Run one Celery worker for the erasure task (what `serve` starts; for containers and GPU hosts)."""
    from lethe_cli.serve import worker_command

    command = worker_command(_settings().task_queue, pool, concurrency, log_level)
    os.execv(command[0], command)


@app.command(epilog=ENVIRONMENT_HELP)
def dispatcher() -> None:
    """Run the outbox dispatcher as its own process (what `serve` starts on Postgres; for containers):
    it sends committed erasure requests to the broker, woken by Postgres NOTIFY. Run the API with
    LETHE_DISPATCHER_IN_API=0 beside it."""
    from lethe_cli.serve import dispatcher_command

    _settings()  # refuse bad settings here, with the variable named, rather than in the child
    command = dispatcher_command()
    os.execv(command[0], command)


@app.command(epilog=ENVIRONMENT_HELP)
def demo(
    federation: Annotated[Path | None, typer.Option(
        help="an existing model version directory to use (default: runs/<config name>, trained if missing)")] = None,
    config: Annotated[Path, typer.Option("--config", "-c", help="federation config to train")] = DEFAULT_CONFIG,
    workdir: Annotated[Path, typer.Option(help="demo folder (database, keys, artifacts, reports, logs); "
                                               "reset on every run except its signing key")] = Path("runs/demo"),
    keep_running: Annotated[bool, typer.Option(help="keep the API and worker running until Ctrl-C")] = False,
    port: Annotated[int, typer.Option(help="API port on 127.0.0.1 (0: a free one)")] = 0,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the erasure request to finish")] = 1800.0,
) -> None:
    """The whole service end to end on the embedded default (what `./run demo` runs).

    Set up (SQLite database, migrations, signing key, tokens), train or reuse the default federation,
    start the API and a worker on 127.0.0.1, register the federation, submit an erasure request for the
    exclusive client over REST, poll it, download the JSON and PDF reports, verify the new version's
    signature and the audit chain, print where everything is and the gates, then stop. Exit code 1 if a
    gate or a check failed."""
    from lethe_cli.demo import run_demo

    raise typer.Exit(run_demo(federation, config, workdir, keep_running=keep_running, port=port, timeout=timeout))


app.registered_commands.insert(0, app.registered_commands.pop())  # `demo` first in --help


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())


if __name__ == "__main__":
    main()
