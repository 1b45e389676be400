"""One error shape for every failure: `{"error": {"message", "type", "param", "code"}}` (OpenAI's).

Any `HatCatError` (raised by the engine or a route; `APIError` for what only HTTP knows) is
answered with its status, code and param; FastAPI's validation errors (bad fields, malformed JSON, a body
that is not JSON), Starlette's 404/405 and anything unexpected are turned into the same shape.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from hatcat.errors import HatCatError

log = logging.getLogger("hatcat.api")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


class APIError(HatCatError):
    """An error only the HTTP layer knows about (a route, a method, a model id), with its status first."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code, status=status, headers=headers)


def as_body(err: BaseException) -> dict[str, Any]:
    """Any failure in the error shape: a HatCatError as it says, anything else a 500."""
    if isinstance(err, HatCatError):
        return error_body(err.status, err.message, err.param, err.code)
    return error_body(500, f"internal error: {type(err).__name__}: {err}", code="internal_error")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


# For the OpenAPI document: which error statuses a route can answer.
def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": ERROR_TYPES.get(status, "error")} for status in statuses}


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    content_type = request.headers.get("content-type", "")
    if any(e.get("loc", ())[:1] == ("body",) for e in errors) and not _is_json(content_type):
        return error_response(
            400,
            f"the request body must be JSON (Content-Type: application/json), got {content_type or 'no Content-Type'}",
            code="unsupported_content_type",
        )
    first = errors[0] if errors else {}
    # not the location's parts that name where (body, query...) or which branch of a union it was
    loc = [
        str(part)
        for part in first.get("loc", ())
        if part not in ("body", "query", "path", "header", "str") and not re.search(r"[\[-]", str(part))
    ]
    if first.get("type") in ("union_tag_invalid", "union_tag_not_found"):  # e.g. a message's unknown role
        loc.append(str((first.get("ctx") or {}).get("discriminator", "")).strip("'\""))
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return error_response(
            400, f"the request body is not valid JSON{': ' + str(detail) if detail else ''}", code="json_invalid"
        )
    if first.get("type") == "missing" and not loc:
        return error_response(400, "the request needs a JSON body", code="missing_body")
    message = first.get("msg", "invalid request")
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return error_response(
        400, f"{param}: {message}{more}" if param else f"{message}{more}", param=param, code=first.get("type")
    )


async def _hatcat_error(request: Request, exc: HatCatError) -> JSONResponse:
    return JSONResponse(as_body(exc), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, f"internal error: {type(exc).__name__}", code="internal_error")


def install(api: FastAPI) -> None:
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(HatCatError, _hatcat_error)
    api.add_exception_handler(StarletteHTTPException, _http_error)
    api.add_exception_handler(Exception, _unexpected)
