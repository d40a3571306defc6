"""``lethe token ...`` and ``lethe db ...``: typer sub-apps mounted into the ``lethe`` command (torch-free)::

    app.add_typer(token_app, name="token")
    app.add_typer(db_app, name="db")

They use LETHE_DATABASE_URL (or --database-url). ``lethe-admin`` (``admin_app``) offers the same two without
the engine: it never imports torch, so it runs in the API image, e.g. the first token of a deployment::

    docker compose run --rm api lethe-admin token create --role admin --name ops
"""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy import select

from lethe_cli.compliance import mount as mount_compliance
from lethe_cli.compliance import token_webhook
from lethe_cli.database_option import DatabaseUrl, _database
from service.db import upgrade_database
from service.models import ApiToken, Role
from service.settings import get_settings

token_app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)



@token_app.command("create")
def token_create(
    role: Annotated[Role, typer.Option(help="requester, compliance, aggregator or admin")],
    name: Annotated[str, typer.Option(help="Who or what uses the token")] = "cli",
    database_url: DatabaseUrl = None,
) -> None:
    """Create a token and print it once (only its sha256 is stored)."""
    from service.auth import create_token

    db = _database(database_url)
    with db.transaction() as session:
        plaintext = create_token(session, name, role)
    typer.echo(plaintext)
    typer.echo(f"(role {role.value}, name {name!r}; store it now: it cannot be shown again)", err=True)


@token_app.command("list")
def token_list(database_url: DatabaseUrl = None) -> None:
    db = _database(database_url)
    with db.session() as session:
        for token in session.scalars(select(ApiToken).order_by(ApiToken.id)):
            state = "revoked" if token.revoked else "active"
            typer.echo(f"{token.id}\t{token.role}\t{state}\t{token.name}\t{token.created_at:%Y-%m-%d %H:%M}")


@token_app.command("revoke")
def token_revoke(token_id: int, database_url: DatabaseUrl = None) -> None:
    from service.auth import revoke_token

    db = _database(database_url)
    try:
        with db.transaction() as session:
            token = revoke_token(session, token_id)
    except LookupError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"revoked token {token.id} ({token.name})")


@token_app.command("grant")
def token_grant(
    token_id: int,
    model: Annotated[str, typer.Option(help="The model name")],
    client: Annotated[str, typer.Option(help="A client id, or '*' for every client of the model")] = "*",
    database_url: DatabaseUrl = None,
) -> None:
    """Let a requester token ask erasure for a client of a model (only granted pairs are accepted)."""
    _change_grant(token_id, model, client, database_url, revoke=False)


@token_app.command("ungrant")
def token_ungrant(
    token_id: int,
    model: Annotated[str, typer.Option(help="The model name")],
    client: Annotated[str, typer.Option(help="The client id the grant names ('*' included)")] = "*",
    database_url: DatabaseUrl = None,
) -> None:
    """Take a grant back."""
    _change_grant(token_id, model, client, database_url, revoke=True)


@token_app.command("grants")
def token_grants(token_id: int, database_url: DatabaseUrl = None) -> None:
    """The (model, client) pairs a requester token may ask erasure for."""
    from service import scopes

    with _database(database_url).session() as session:
        for scope in scopes.list_grants(session, token_id):
            typer.echo(f"{scope.model_name}\t{scope.client_id}")


def _change_grant(token_id: int, model: str, client: str, database_url: str | None, revoke: bool) -> None:
    from service import scopes
    from service.errors import ApiError

    actor = {"cli": "lethe token"}
    try:
        with _database(database_url).transaction() as session:
            if revoke:
                done = scopes.revoke_grant(session, token_id, model, client, actor)
            else:
                done = scopes.grant(session, token_id, model, client, actor)[1]
    except ApiError as exc:
        typer.echo(exc.message, err=True)
        raise typer.Exit(1) from exc
    verb = ("revoked" if done else "had no grant for") if revoke else ("granted" if done else "already had")
    typer.echo(f"token {token_id} {verb}: model {model!r}, client {client!r}")


@db_app.command("upgrade")
def db_upgrade(revision: str = "head", database_url: DatabaseUrl = None) -> None:
    """Apply the migrations (the same for SQLite and Postgres)."""
    url = database_url or get_settings().database_url
    upgrade_database(url, revision)
    typer.echo(f"database at {url.split('@')[-1]} is at {revision}")


admin_app = typer.Typer(help="Administer Lethe without the engine (no torch): API tokens and the database schema.",
                        no_args_is_help=True)
admin_app.add_typer(token_app, name="token", help="API tokens (stored hashed; the plaintext is shown once)")
admin_app.add_typer(db_app, name="db", help="database schema (Alembic migrations)")

token_app.command("webhook")(token_webhook)
mount_compliance(admin_app)
