"""Roles in the workbench: `guard` wraps a panel's handler so that its user needs a role.

The page and its Gradio API sit behind Gradio's login (`app.py` mounts it with the users
file); a handler learns the logged-in name from `gr.Request.username`. Without access control
every visitor may do everything and is recorded as `local`.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable
from typing import Any, get_type_hints

import gradio as gr

from hatcat.access import Forbidden, Role, User
from hatcat.engine import Engine
from hatcat.store import StoreWriteError

LOCAL = "local"
_current: contextvars.ContextVar[User | None] = contextvars.ContextVar("workbench_user", default=None)


def current_user() -> User | None:
    """Who runs the guarded handler now (None without access control)."""
    return _current.get()


def current_actor() -> str:
    """The name the records give whoever runs the handler now."""
    user = _current.get()
    return user.name if user else LOCAL


def audit(engine: Engine, action: str, target: str, **detail: Any) -> None:
    """Record an action (by the current user) before it is done; a store that refuses stops it."""
    if engine.records is not None:
        try:
            engine.records.audit(current_actor(), action, target, **detail)
        except StoreWriteError as err:
            raise gr.Error(f"Not done: {err}", print_exception=False) from None


def allow(engine: Engine, request: gr.Request | None, role: Role, action: str) -> User | None:
    """The logged-in user if their role allows `action` (None without access control); else a page error."""
    if engine.users is None:
        return None
    user = engine.users.user(getattr(request, "username", None))
    if user is None:
        raise gr.Error("Log in first.", print_exception=False)
    try:
        user.require(role, action)
    except Forbidden as err:
        raise gr.Error(f"Forbidden: {err}", print_exception=False) from None
    return user


def guard(engine: Engine, role: Role, action: str) -> Callable[[Callable], Callable]:
    """A decorator: the handler runs only for a user with `role`; `current_actor()` names them inside."""

    def wrap(fn: Callable) -> Callable:
        hints = get_type_hints(fn)
        params = list(inspect.signature(fn).parameters.values())
        at = next((i for i, p in enumerate(params) if hints.get(p.name) is gr.Request), None)
        kept = [p for i, p in enumerate(params) if i != at]

        def begin(args: tuple) -> tuple[User | None, list]:
            *inputs, request = args
            user = allow(engine, request, role, action)
            if at is not None:
                inputs.insert(at, request)
            return user, inputs

        if inspect.isgeneratorfunction(fn):

            def wrapper(*args: Any) -> Any:
                user, inputs = begin(args)
                steps = fn(*inputs)
                while True:
                    token = _current.set(user)
                    try:
                        item = next(steps)
                    except StopIteration:
                        return
                    finally:
                        _current.reset(token)
                    yield item

        else:

            def wrapper(*args: Any) -> Any:
                user, inputs = begin(args)
                token = _current.set(user)
                try:
                    return fn(*inputs)
                finally:
                    _current.reset(token)

        # Gradio passes the request to the parameter annotated gr.Request: the wrapper's last one
        request = inspect.Parameter(
            "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request
        )
        wrapper.__signature__ = inspect.Signature([*kept, request])
        wrapper.__annotations__ = {p.name: hints[p.name] for p in kept if p.name in hints} | {"request": gr.Request}
        wrapper.__name__ = wrapper.__qualname__ = fn.__name__
        wrapper.__doc__ = fn.__doc__
        return wrapper

    return wrap
