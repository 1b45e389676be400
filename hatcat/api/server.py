"""FastAPI application factory: one app per Engine, a thin router per endpoint.

Middleware, outermost first: CORS (when `HATCAT_CORS_ORIGINS` is set), request metrics,
the door on `/v1/*` (a Bearer key, when access control is configured; failed keys throttled), limits (body size,
rate per key). Every error leaves in one shape
(`hatcat.api.errors`); an unknown `/v1/...` path is answered here (404, or 405 for a known
path with another method) rather than by the workbench mounted at `/`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from starlette.routing import Match, Mount, Route
from starlette.types import Receive, Scope, Send

from hatcat.api import analyze, chat, concept_packs, errors, health, metrics, models, probe_packs, records, steering
from hatcat.api.auth import Door, LoginThrottle
from hatcat.api.errors import error_response
from hatcat.api.limits import Limits, RateWindow, StreamSlots
from hatcat.engine import Engine

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "QUERY"]


def create_api(engine: Engine) -> FastAPI:
    """The FastAPI app serving `engine` (Gradio is mounted on it by `app.py`)."""
    settings = engine.settings
    api = FastAPI(title="HatCat", summary="Concept monitoring and divergence for a language model", version="1")
    api.state.engine = engine
    api.state.metrics = metrics.Metrics(engine)
    errors.install(api)
    api.state.streams = StreamSlots(settings.max_streams)
    for module in (health, metrics, models, chat, analyze, steering, concept_packs, probe_packs, records):
        api.include_router(module.router)
    # an ASGI endpoint without `methods` matches every method, QUERY and other new ones included
    api.router.routes.append(Route("/v1/{path:path}", _UnknownRoute()))
    api.add_middleware(Limits, max_body_bytes=settings.max_body_bytes, per_minute=settings.rate_limit)
    if engine.users is not None:
        failures = RateWindow(settings.auth_failures) if settings.auth_failures else None
        api.add_middleware(Door, users=engine.users, failures=failures)
        if failures is not None:
            api.add_middleware(LoginThrottle, failures=failures)
    api.add_middleware(metrics.MetricsMiddleware, metrics=api.state.metrics)
    if settings.cors_origins:
        origins = list(settings.cors_origins)
        api.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_credentials="*" not in origins,  # browsers refuse `*` with credentials; so do we
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    _schema_limits(api, settings.max_tokens, len(engine.loaded.layers), access=engine.users is not None)
    return api


class _UnknownRoute:
    """Answers `/v1/...` requests no API route takes: 405 with `Allow` for a known path, else 404."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        # the API's own routes: not this catch-all, not the workbench mounted at `/` (it takes any path)
        routes = [
            r
            for r in request.app.router.routes
            if getattr(r, "endpoint", None) is not self and not isinstance(r, Mount)
        ]
        allowed = [
            m
            for m in ALL_METHODS
            if any(r.matches({**scope, "path": request.url.path, "method": m})[0] == Match.FULL for r in routes)
        ]
        if allowed:
            message = f"{request.method} is not allowed on {request.url.path}; allowed: {', '.join(allowed)}"
            response = error_response(405, message, code="method_not_allowed", headers={"Allow": ", ".join(allowed)})
        else:
            response = error_response(404, f"no route {request.method} {request.url.path}", code="unknown_route")
        await response(scope, receive, send)


def _schema_limits(api: FastAPI, max_tokens: int, layers: int, access: bool) -> None:
    """Write what is known only at run time into the OpenAPI document: the limits (HATCAT_MAX_TOKENS,
    the model's depth) and, with access control, the Bearer key every /v1 operation needs."""
    build = api.openapi
    limits = {
        ("ChatCompletionRequest", "max_tokens"): max_tokens,
        ("ChatCompletionRequest", "max_completion_tokens"): max_tokens,
        ("SteeringAdd", "layer"): layers - 1,
        ("SteeringUpdate", "layer"): layers - 1,
    }

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schemas = build().get("components", {}).get("schemas", {})
            for (model, name), maximum in limits.items():
                field = schemas.get(model, {}).get("properties", {}).get(name, {})
                for branch in field.get("anyOf", [field]):
                    if branch.get("type") == "integer":
                        branch["maximum"] = maximum
            # every /v1 operation may answer 413 and 429 (limits), and with access control 401 and 403
            statuses = {"413": "body too large", "429": "rate limited (see Retry-After)"}
            if access:
                statuses |= {"401": "missing or invalid API key", "403": "the key's role does not allow this"}
                api.openapi_schema.setdefault("components", {})["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer", "description": "an API key (HATCAT_USERS_FILE)"}
                }
            error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
            for path, operations in api.openapi_schema.get("paths", {}).items():
                for operation in operations.values() if path.startswith("/v1") else ():
                    for status, description in statuses.items():
                        operation["responses"].setdefault(status, {"description": description, "content": error})
                    if access:
                        operation["security"] = [{"bearer": []}]
        return api.openapi_schema

    api.openapi = openapi
