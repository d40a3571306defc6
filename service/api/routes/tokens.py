"""/v1/tokens/{id}/grants: the (model, client) pairs a requester token may ask erasure for (admin only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse, Response

from service import scopes
from service.api.deps import AdminOnly, SessionDep
from service.api.problems import problems
from service.auth import Principal
from service.errors import ApiError
from service.schemas import MAX_INT32, GrantCreate, GrantOut, Identifier, ModelNameText

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])

TokenId = Annotated[int, Path(ge=1, le=MAX_INT32, description="The token's id (`lethe token list`)")]


def _out(scope) -> dict:
    return GrantOut(token_id=scope.token_id, model=scope.model_name, client_id=scope.client_id,
                    created_at=scope.created_at).model_dump(mode="json")


@router.get("/{token_id}/grants", response_model=list[GrantOut], summary="List a requester token's grants",
            responses=problems(404, 422, descriptions={404: "No such token", 422: "Not a requester token"}))
def list_grants(token_id: TokenId, session: SessionDep, _principal: Principal = AdminOnly):
    scopes.requester_token(session, token_id)
    return [_out(scope) for scope in scopes.list_grants(session, token_id)]


@router.post("/{token_id}/grants", status_code=201, response_model=GrantOut, summary="Grant a requester token a client",
             responses={200: {"description": "Granted before", "model": GrantOut},
                        **problems(404, 422, descriptions={
                            404: "No such token", 422: "Not a requester token, or a bad model or client id"})})
def add_grant(token_id: TokenId, body: GrantCreate, session: SessionDep, principal: Principal = AdminOnly):
    """Let a requester token ask erasure for one client of a model (``client_id`` ``*``: every client)."""
    scope, created = scopes.grant(session, token_id, body.model, body.client_id, principal.as_actor())
    session.commit()
    return JSONResponse(_out(scope), status_code=201 if created else 200)


@router.delete("/{token_id}/grants", status_code=204, summary="Revoke a grant",
               responses=problems(404, 422, descriptions={404: "No such token or grant",
                                                          422: "Not a requester token, or a bad model or client id"}))
def remove_grant(token_id: TokenId, session: SessionDep, model: Annotated[ModelNameText, Query()],
                 client_id: Annotated[Identifier, Query(alias="client")], principal: Principal = AdminOnly):
    if not scopes.revoke_grant(session, token_id, model, client_id, principal.as_actor()):
        raise ApiError(404, "grant_not_found", f"Token {token_id} has no grant for client '{client_id}' of model "
                       f"'{model}'.", {"token_id": token_id, "model": model, "client_id": client_id})
    session.commit()
    return Response(status_code=204)
