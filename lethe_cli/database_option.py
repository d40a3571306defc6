"""The ``--database-url`` option of the admin commands (``lethe_cli.admin``, ``lethe_cli.compliance``)."""

from __future__ import annotations

from typing import Annotated

import typer

from service.db import Database
from service.settings import get_settings

DatabaseUrl = Annotated[str | None, typer.Option("--database-url", envvar="LETHE_DATABASE_URL",
                                                 help="SQLAlchemy URL; default: LETHE_DATABASE_URL.")]


def _database(url: str | None) -> Database:
    return Database(url or get_settings().database_url)
