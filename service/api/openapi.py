"""The OpenAPI document: a bearer security scheme (the Authorize button of /docs) on every operation that
needs a token, and every error answer documented with the ``Problem`` body (``application/problem+json``).

Each operation's documented errors: those its route names (``service.api.problems.problems``), plus 401 and
403 when it needs a token, 422 when it takes parameters or a body, 413 when it takes a body, 503 for every
operation that uses the database."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from service.api.problems import DEFAULT_DESCRIPTIONS, Problem
from service.api.routes.health import scrape_access
from service.auth import current_principal
from service.errors import PROBLEM_JSON

SCHEME = "bearerAuth"
NO_DATABASE = {"/healthz", "/v1/keys"}  # /metrics and /readyz check an admin token in the database
TOKEN_CHECKS = (current_principal, scrape_access)  # a route depending on one of these needs a bearer token


def _needs_token(dependant) -> bool:
    return any(dep.call in TOKEN_CHECKS or _needs_token(dep) for dep in dependant.dependencies)


def _takes_input(route: APIRoute) -> bool:
    dependant = route.dependant
    stack, found = [dependant], False
    while stack and not found:
        current = stack.pop()
        found = bool(current.path_params or current.query_params or current.header_params or current.body_params)
        stack.extend(current.dependencies)
    return found


def _api_routes(app: FastAPI) -> list[APIRoute]:
    """Every API route, those of included routers too (FastAPI >= 0.160 nests them)."""
    from fastapi import routing
    from fastapi.openapi import utils

    if hasattr(routing, "iter_route_contexts"):
        found = (utils._get_api_route_for_openapi(context) for context in routing.iter_route_contexts(app.routes))
        return [route for route in found if route is not None]
    return [route for route in app.routes if isinstance(route, APIRoute)]


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = document.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas.update(Problem.model_json_schema(ref_template="#/components/schemas/{model}")["$defs"])
        schemas["Problem"] = {k: v for k, v in Problem.model_json_schema(
            ref_template="#/components/schemas/{model}").items() if k != "$defs"}
        components["securitySchemes"] = {SCHEME: {
            "type": "http", "scheme": "bearer",
            "description": "An API token: `lethe-admin token create --role ROLE --name NAME`"}}
        for route in _api_routes(app):
            if not route.include_in_schema:
                continue
            for method in route.methods:
                operation = document["paths"].get(route.path_format, {}).get(method.lower())
                if operation is not None:
                    _complete(route, operation)
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = document
        return document

    app.openapi = openapi


def _fastapi_default(response: dict[str, Any]) -> bool:
    """FastAPI's own 422 body (``HTTPValidationError``), which this API never sends."""
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return schema.get("$ref", "").endswith("/HTTPValidationError")


def _complete(route: APIRoute, operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    statuses = set()
    if _needs_token(route.dependant):
        operation["security"] = [{SCHEME: []}]
        statuses |= {401, 403}
    if _takes_input(route):
        statuses.add(422)
    if route.dependant.body_params:
        statuses.add(413)
    if route.path_format not in NO_DATABASE:
        statuses.add(503)
    for status in statuses:
        responses.setdefault(str(status), {"description": DEFAULT_DESCRIPTIONS[status]})
    for status, response in responses.items():
        if status.isdigit() and int(status) >= 400 and ("content" not in response or _fastapi_default(response)):
            response["content"] = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
