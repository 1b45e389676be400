"""Who is calling `/v1/*`: a Bearer key checked against the users file and `HATCAT_API_KEY`.

`Door` runs before routing when access control is configured, so an unauthenticated request
learns nothing else (not even whether its JSON was valid); `/health`, `/metrics` and CORS
preflights (OPTIONS) pass. A key seen valid before costs a dictionary lookup; any other costs an
argon2 verification, so failed authentications are counted per client address and per key id
(`HATCAT_AUTH_FAILURES` a minute): past that, 429 with `Retry-After` before any hashing; the
workbench's login form counts its failures in the same window (`LoginThrottle`). The user
lands in `request.state.user`; routes state the role they need with
`Depends(requires(Role.x, "what"))` (403 with the reason otherwise). Without access control every
caller is `None` and may do everything, as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hatcat.access import Directory, Role, User, key_id
from hatcat.api.errors import error_response
from hatcat.api.limits import RateWindow, is_api


class Door:
    def __init__(self, app: ASGIApp, users: Directory, failures: RateWindow | None) -> None:
        self.app, self.users, self.failures = app, users, failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] != "OPTIONS" and is_api(scope.get("path", "")):
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, key = given.partition(" ")
            key = key.strip() if scheme.lower() == "bearer" else ""
            user = self.users.known(key) if key else None
            if user is None and key:
                counted = (_address(scope), f"key:{key_id(key)}")
                if self.failures is not None and (wait := self.failures.wait(counted)) > 0:
                    await _throttled(wait)(scope, receive, send)
                    return
                user = await run_in_threadpool(self.users.verify, key)  # argon2: off the event loop
                if user is None and self.failures is not None:
                    self.failures.add(counted)
            if user is None:
                message = "invalid API key" if given else "missing API key: send Authorization: Bearer <key>"
                response = error_response(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
            scope.setdefault("state", {})["user"] = user
        await self.app(scope, receive, send)


class LoginThrottle:
    """The workbench's login form (Gradio's `POST /login`): its failures count per client address in the
    same window as failed API keys, and past the limit the form answers 429 before any hashing."""

    def __init__(self, app: ASGIApp, failures: RateWindow) -> None:
        self.app, self.failures = app, failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("path") != "/login":
            await self.app(scope, receive, send)
            return
        counted = (_address(scope),)
        if (wait := self.failures.wait(counted)) > 0:
            await _throttled(wait)(scope, receive, send)
            return
        status = 0

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, watched)
        if status >= 400:  # Gradio answers a wrong name or password with 400
            self.failures.add(counted)


def _address(scope: Scope) -> str:
    return f"address:{(scope.get('client') or ('?',))[0]}"


def _throttled(wait: float) -> JSONResponse:
    retry = str(max(1, math.ceil(wait)))
    message = f"too many failed authentications; retry in {retry} s"
    return error_response(429, message, code="auth_throttled", headers={"Retry-After": retry})


def caller(request: Request) -> User | None:
    """The authenticated user, or None when access control is off."""
    return getattr(request.state, "user", None)


def actor(request: Request) -> str:
    """The name the records give the caller."""
    user = caller(request)
    return user.name if user else "anonymous"


def requires(role: Role, action: str) -> Callable[[Request], None]:
    """A route dependency: 403 naming the role needed when the caller's is lower."""

    def check(request: Request) -> None:
        user = caller(request)
        if user is not None:
            user.require(role, action)  # Forbidden: a 403 with the reason

    return check


def session_key(request: Request, session_id: str) -> str:
    """Steering sessions are the caller's own: the same id from two users names two sessions."""
    user = caller(request)
    return f"{user.name}/{session_id}" if user else session_id
