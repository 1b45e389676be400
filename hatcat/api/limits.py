"""Limits on `/v1/*`: a body size cap (413), requests per minute per key and concurrent streams
per key (429 with `Retry-After`). Settings: `HATCAT_MAX_BODY_BYTES`, `HATCAT_RATE_LIMIT`,
`HATCAT_MAX_STREAMS` (`hatcat.config`). The rate and stream limits count per key (the
authenticated user), so they apply with access control; the body cap always applies. Failed
authentications are counted by the door (`hatcat.api.auth`) in a `RateWindow` of their own.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque

from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hatcat.api.errors import APIError, error_response

WINDOW_S = 60.0


def is_api(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def identity(scope: Scope) -> str | None:
    """The key's user, or None without access control."""
    user = scope.get("state", {}).get("user")
    return user.name if user is not None else None


class RateWindow:
    """At most `per_minute` requests per key in any 60 s (a sliding window of arrival times)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._seen: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def admit(self, key: str, now: float | None = None) -> float:
        """0 when admitted (and counted), else the seconds until the oldest request leaves the window."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if (wait := self._wait(key, now)) > 0:
                return wait
            self._seen[key].append(now)
            return 0.0

    def wait(self, keys: tuple[str, ...], now: float | None = None) -> float:
        """0 when none of `keys` is at its limit, else the seconds until all are below it (counts nothing)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return max(self._wait(key, now) for key in keys)

    def add(self, keys: tuple[str, ...], now: float | None = None) -> None:
        """Count one event for each of `keys`."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for key in keys:
                self._seen[key].append(now)

    def _wait(self, key: str, now: float) -> float:
        seen = self._seen[key]
        while seen and seen[0] <= now - WINDOW_S:
            seen.popleft()
        if not seen:
            del self._seen[key]  # an address seen once is not kept for ever
            return 0.0
        # below the limit again once the oldest events beyond it have left the window
        return seen[len(seen) - self.per_minute] + WINDOW_S - now if len(seen) >= self.per_minute else 0.0


class Limits:
    """ASGI middleware: body cap and rate limit on `/v1/*` (inside the auth door, so the key is known)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, per_minute: int) -> None:
        self.app, self.max_body = app, max_body_bytes
        self.window = RateWindow(per_minute) if per_minute else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or not is_api(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        key = identity(scope)
        if self.window is not None and key is not None and (wait := self.window.admit(key)) > 0:
            retry = max(1, math.ceil(wait))
            message = f"rate limit: at most {self.window.per_minute} requests per minute per key; retry in {retry} s"
            await _send(scope, receive, send, 429, message, "rate_limited", {"Retry-After": str(retry)})
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _send(scope, receive, send, 413, self._too_large(), "body_too_large")
            return
        received = 0

        async def counted() -> Message:  # bodies without a Content-Length are counted as they arrive
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise HTTPException(413, self._too_large())  # FastAPI passes it on while reading the body
            return message

        await self.app(scope, counted, send)

    def _too_large(self) -> str:
        return f"the request body is larger than this server's limit of {self.max_body} bytes (HATCAT_MAX_BODY_BYTES)"


async def _send(scope, receive, send, status: int, message: str, code: str, headers: dict | None = None) -> None:
    await error_response(status, message, code=code, headers=headers)(scope, receive, send)


class StreamSlots:
    """At most `per_key` streamed completions at once per key; `take` raises 429 beyond that."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self._open: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def take(self, request: Request) -> str | None:
        key = identity(request.scope)
        if key is None:
            return None
        with self._lock:
            if self.per_key and self._open[key] >= self.per_key:
                raise APIError(
                    429,
                    f"at most {self.per_key} concurrent streams per key (HATCAT_MAX_STREAMS); close one and retry",
                    code="too_many_streams",
                    headers={"Retry-After": "1"},
                )
            self._open[key] += 1
        return key

    def give(self, key: str | None) -> None:
        if key is None:
            return
        with self._lock:
            self._open[key] = max(0, self._open[key] - 1)
