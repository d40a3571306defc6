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
from sqlalchemy import event, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.audit import append_event
from service.bounded_cache import BoundedCache
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
    principal_cache.clear()
    # and again once the revocation is visible, so no request in between re-caches the token
    event.listen(session, "after_commit", lambda _session: principal_cache.clear(), once=True)
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


# token sha256 (per database) -> Principal for ``LETHE_AUTH_CACHE_SECONDS``, so a request does not look its token
# up again. Only valid tokens are cached, at most 1024 of them. ``revoke_token`` clears the cache of its own
# process at once; other processes (another uvicorn worker, the CLI) notice a revocation within the TTL
# (0 turns the cache off).
principal_cache: BoundedCache[Principal] = BoundedCache(1024)


def bearer_credentials(authorization: str | None) -> str:
    if not authorization:
        raise _unauthorized("Missing credentials: send 'Authorization: Bearer <token>' (create one with "
                            "'lethe token create --name NAME --role ROLE').")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise _unauthorized("Malformed Authorization header: expected 'Bearer <token>'.")
    return credentials.strip()


_TOKEN_BY_HASH = select(ApiToken.id, ApiToken.name, ApiToken.role, ApiToken.revoked)


def _lookup(session: Session, digest: str) -> Principal:
    row = session.execute(_TOKEN_BY_HASH.where(ApiToken.token_sha256 == digest)).one_or_none()
    if row is None or row.revoked:
        raise _unauthorized("Unknown or revoked API token.")
    return Principal(row.id, row.name, Role(row.role))


def authenticate(session: Session, authorization: str | None) -> Principal:
    return _lookup(session, hash_token(bearer_credentials(authorization)))


def get_session(request: Request):
    with request.app.state.db.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def _lookup_in_own_session(db, digest: str) -> Principal:
    with db.session() as session:
        return _lookup(session, digest)


async def current_principal(request: Request) -> Principal:
    """The token's principal: from the in-process cache, else from the database (in a worker thread,
    with a session of its own, so the route's session and transaction are not touched)."""
    digest = hash_token(bearer_credentials(request.headers.get("authorization")))
    state = request.app.state
    key = (state.db.url, digest)
    principal = principal_cache.get(key)
    if principal is None:
        principal = await run_in_threadpool(_lookup_in_own_session, state.db, digest)
        principal_cache.put(key, principal, ttl=state.settings.auth_cache_seconds)
    return principal


def require_roles(*roles: Role):
    """A dependency that lets through the given roles and admin, and answers 403 otherwise."""

    async def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.has_role(*roles):
            allowed = ", ".join(sorted({role.value for role in roles} | {Role.ADMIN.value}))
            raise ApiError(
                403, "forbidden",
                f"Role '{principal.role.value}' may not do this; it needs one of: {allowed}.",
            )
        return principal

    return dependency


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
