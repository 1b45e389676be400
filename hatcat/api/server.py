"""FastAPI application factory: one app per Engine, a thin router per endpoint.

Middleware, outermost first: CORS (when `HATCAT_CORS_ORIGINS` is set), request metrics,
Bearer auth on `/v1/*` (when `HATCAT_API_KEY` is set). Every error leaves in one shape
(`hatcat.api.errors`); an unknown `/v1/...` path is answered here (404, or 405 for a known
path with another method) rather than by the workbench mounted at `/`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from starlette.routing import Match, Mount

from hatcat.api import analyze, chat, errors, health, metrics, models, packs, steering
from hatcat.api.auth import BearerAuth
from hatcat.api.errors import APIError
from hatcat.engine import Engine

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]


def create_api(engine: Engine) -> FastAPI:
    """The FastAPI app serving `engine` (Gradio is mounted on it by `app.py`)."""
    settings = engine.settings
    api = FastAPI(title="HatCat", summary="Concept monitoring and divergence for a language model", version="1")
    api.state.engine = engine
    api.state.metrics = metrics.Metrics(engine)
    errors.install(api)
    for module in (health, metrics, models, chat, analyze, steering, packs):
        api.include_router(module.router)
    api.add_api_route("/v1/{path:path}", _unknown_route, methods=ALL_METHODS, include_in_schema=False)
    if settings.api_key:
        api.add_middleware(BearerAuth, key=settings.api_key)
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
    _schema_limits(api, settings.max_tokens, len(engine.loaded.layers))
    return api


async def _unknown_route(request: Request, path: str) -> None:
    # the API's own routes: not this catch-all, not the workbench mounted at `/` (it takes any path)
    routes = [
        r
        for r in request.app.router.routes
        if getattr(r, "endpoint", None) is not _unknown_route and not isinstance(r, Mount)
    ]
    allowed = [
        m
        for m in ALL_METHODS
        if any(r.matches({**request.scope, "path": request.url.path, "method": m})[0] == Match.FULL for r in routes)
    ]
    if allowed:
        message = f"{request.method} is not allowed on {request.url.path}; allowed: {', '.join(allowed)}"
        raise APIError(405, message, code="method_not_allowed", headers={"Allow": ", ".join(allowed)})
    raise APIError(404, f"no route {request.method} {request.url.path}", code="unknown_route")


def _schema_limits(api: FastAPI, max_tokens: int, layers: int) -> None:
    """Write the limits known only at run time (HATCAT_MAX_TOKENS, the model's depth) into the OpenAPI document."""
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
        return api.openapi_schema

    api.openapi = openapi
