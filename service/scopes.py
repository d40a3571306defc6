"""Which clients a requester token may ask erasure for: the (model, client) grants an admin gave it.

A requester may submit an erasure request only for a (model, client) pair it was granted (``client`` ``*``:
every client of that model); anything else is answered 403 and nothing is written. Admins need no grant;
compliance and aggregator tokens cannot submit at all. Grants are managed by admins
(``/v1/tokens/{id}/grants``, ``lethe token grant``) and every change is an audit event.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.audit import append_event
from service.errors import ApiError
from service.models import ALL_CLIENTS, ApiToken, Role, TokenScope


def requester_token(session: Session, token_id: int) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise ApiError(404, "token_not_found", f"No API token with id {token_id}.", {"token_id": token_id})
    if token.role != Role.REQUESTER.value:
        raise ApiError(422, "not_a_requester_token", f"Token {token_id} has role '{token.role}'; only requester "
                       "tokens take grants (admins need none, other roles cannot submit).",
                       {"token_id": token_id, "role": token.role})
    return token


def list_grants(session: Session, token_id: int) -> list[TokenScope]:
    return list(session.scalars(select(TokenScope).where(TokenScope.token_id == token_id)
                                .order_by(TokenScope.model_name, TokenScope.client_id)))


def grant(session: Session, token_id: int, model: str, client_id: str, actor: dict | None = None
          ) -> tuple[TokenScope, bool]:
    """Grant ``token_id`` the pair (``model``, ``client_id``); returns the grant and whether it is new. The
    caller commits."""
    token = requester_token(session, token_id)
    existing = session.scalars(select(TokenScope).where(
        TokenScope.token_id == token_id, TokenScope.model_name == model, TokenScope.client_id == client_id)).first()
    if existing is not None:
        return existing, False
    scope = TokenScope(token_id=token_id, model_name=model, client_id=client_id)
    session.add(scope)
    session.flush()
    append_event(session, "token.scope_granted", {"token_id": token_id, "token_name": token.name, "model": model,
                                                  "client_id": client_id, "actor": actor})
    return scope, True


def revoke_grant(session: Session, token_id: int, model: str, client_id: str, actor: dict | None = None) -> bool:
    """Remove one grant; False if there was none. The caller commits."""
    token = requester_token(session, token_id)
    removed = session.execute(delete(TokenScope).where(
        TokenScope.token_id == token_id, TokenScope.model_name == model, TokenScope.client_id == client_id)).rowcount
    if removed:
        append_event(session, "token.scope_revoked", {"token_id": token_id, "token_name": token.name,
                                                      "model": model, "client_id": client_id, "actor": actor})
    return bool(removed)


def grants_of(session: Session, token_ids: Iterable[int]) -> dict[int, set[tuple[str, str]]]:
    """``{token id: {(model, client), ...}}`` for the given tokens (one query)."""
    ids = sorted(set(token_ids))
    out: dict[int, set[tuple[str, str]]] = {token_id: set() for token_id in ids}
    if ids:
        rows = session.execute(select(TokenScope.token_id, TokenScope.model_name, TokenScope.client_id)
                               .where(TokenScope.token_id.in_(ids)))
        for token_id, model, client in rows:
            out[token_id].add((model, client))
    return out


def allowed(grants: set[tuple[str, str]], model: str, client_id: str) -> bool:
    return (model, client_id) in grants or (model, ALL_CLIENTS) in grants


def out_of_scope(model: str, client_id: str) -> ApiError:
    return ApiError(403, "out_of_scope", f"This token may not request erasure for client '{client_id}' of model "
                    f"'{model}': an admin must grant it (POST /v1/tokens/{{id}}/grants, or `lethe token grant`).",
                    {"model": model, "client_id": client_id})
