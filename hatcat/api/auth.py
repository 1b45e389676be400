"""Bearer-key check for `/v1/*` when `HATCAT_API_KEY` is set; `/health`, `/metrics` and the
workbench stay open. Runs before routing, so an unauthenticated request learns nothing else
(not even whether its JSON was valid). CORS preflights (OPTIONS) pass: they carry no key.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from hatcat.api.errors import error_response


class BearerAuth:
    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and scope["method"] != "OPTIONS" and (path == "/v1" or path.startswith("/v1/")):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                message = "invalid API key" if given else "missing API key: send Authorization: Bearer <key>"
                response = error_response(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
