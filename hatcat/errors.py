"""One base for every error a caller can act on: a one-line message, an HTTP status, a code, a param.

Each module keeps its own subclass (`ConfigError`, `ProbePackError`, ...) with its status and
code; the API answers any `HatCatError` as `{"error": {...}}` with that status, the workbench
shows its message, and the CLIs print it and exit 2 — by type, never by reading the message.
"""

from __future__ import annotations


class HatCatError(Exception):
    """A failure the caller caused or can fix; `status`/`code`/`param` say how the API reports it."""

    status = 400
    code = "invalid_request"
    param: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param if param is not None else type(self).param
        self.code = code or type(self).code
        self.status = status or type(self).status
        self.headers = headers

    def __str__(self) -> str:  # KeyError subclasses would otherwise quote the message
        return self.message


class InvalidValue(HatCatError, ValueError):
    """A request or setting value out of range (`param` names it)."""

    code = "invalid_value"


class ContextLengthExceeded(HatCatError, ValueError):
    """More tokens than the model's context holds."""

    code = "context_length_exceeded"


class NotFound(HatCatError, KeyError):
    """Something named by the caller does not exist."""

    status = 404
    code = "not_found"


class Conflict(HatCatError):
    """The request is valid but the engine's state does not allow it (e.g. no probe pack loaded)."""

    status = 409
    code = "conflict"


class Cancelled(HatCatError):
    """A request gave up its place in the queue for the model, or was stopped while running."""

    status = 503
    code = "cancelled"
