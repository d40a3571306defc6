"""Bearer API tokens, stored only as sha256 hashes, and role checks.

Roles: ``requester`` submits erasure requests and sees only its own; ``compliance`` reads all
requests, reports and the audit chain; ``aggregator`` registers model versions; ``admin`` may do
everything. Create tokens with ``lethe token create --name NAME --role ROLE``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.audit import append_event
from service.errors import ApiError
from service.models import ApiToken, Role

TOKEN_PREFIX = "lethe_"


def hash_token(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def create_token(session: Session, name: str, role: str | Role) -> str:
    """Create a token and return its plaintext (shown once; only the hash is stored)."""
    role = Role(role)
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(name=name, role=role.value, token_sha256=hash_token(plaintext))
    session.add(token)
    session.flush()
    append_event(session, "token.created", {"token_id": token.id, "name": name, "role": role.value})
    return plaintext


def revoke_token(session: Session, token_id: int) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise LookupError(f"no API token with id {token_id}")
    token.revoked = True
    append_event(session, "token.revoked", {"token_id": token.id, "name": token.name, "role": token.role})
    return token


@dataclass(frozen=True)
class Principal:
    token_id: int
    name: str
    role: Role

    def has_role(self, *roles: Role) -> bool:
        return self.role is Role.ADMIN or self.role in roles

    def as_actor(self) -> dict[str, object]:
        return {"token_id": self.token_id, "name": self.name, "role": self.role.value}


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="lethe"'})


def authenticate(session: Session, authorization: str | None) -> Principal:
    if not authorization:
        raise _unauthorized("Missing credentials: send 'Authorization: Bearer <token>' (create one with "
                            "'lethe token create --name NAME --role ROLE').")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise _unauthorized("Malformed Authorization header: expected 'Bearer <token>'.")
    token = session.scalars(
        select(ApiToken).where(ApiToken.token_sha256 == hash_token(credentials.strip()))
    ).one_or_none()
    if token is None or token.revoked:
        raise _unauthorized("Unknown or revoked API token.")
    return Principal(token.id, token.name, Role(token.role))


def get_session(request: Request):
    with request.app.state.db.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def current_principal(request: Request, session: SessionDep) -> Principal:
    principal = authenticate(session, request.headers.get("authorization"))
    session.rollback()  # end the read transaction (SQLite: release the lock early)
    return principal


def require_roles(*roles: Role):
    """A dependency that lets through the given roles and admin, and answers 403 otherwise."""

    def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.has_role(*roles):
            allowed = ", ".join(sorted({role.value for role in roles} | {Role.ADMIN.value}))
            raise ApiError(
                403, "forbidden",
                f"Role '{principal.role.value}' may not do this; it needs one of: {allowed}.",
            )
        return principal

    return dependency


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
