"""Install HatCat's functions into a running OpenWebUI over its REST API (idempotent).

Signs in as an admin, creates each function or updates it to this checkout's source, switches it
on and makes it global (OpenWebUI's toggles flip, so the state is read first), sets the Action's
valves (where HatCat is, its API key) and reads the stored source back to check it is what the
tests ran.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from hatcat.openwebui.bundle import FUNCTIONS, function_source


class InstallError(RuntimeError):
    """OpenWebUI refused a step; the message says which and why."""


def _check(response: httpx.Response, what: str) -> Any:
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise InstallError(f"{what}: OpenWebUI answered {response.status_code}: {str(detail)[:300]}")
    return response.json()


def wait_healthy(url: str, timeout: float) -> None:
    """Poll OpenWebUI's /health until it answers 200 (it may still be migrating its database)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise InstallError(f"{url}/health did not answer 200 within {timeout:.0f} s")
        time.sleep(2)


def sign_in(client: httpx.Client, email: str, password: str) -> str:
    user = _check(client.post("/api/v1/auths/signin", json={"email": email, "password": password}), "sign in")
    if user.get("role") != "admin":
        raise InstallError(f"sign in: {email} is not an admin (role {user.get('role')})")
    return user["token"]


def install(
    url: str,
    email: str,
    password: str,
    hatcat_url: str | None = None,
    api_key: str | None = None,
    wait_s: float = 0.0,
) -> list[dict[str, Any]]:
    """Install every function; returns one line of state per function."""
    url = url.rstrip("/")
    if wait_s > 0:
        wait_healthy(url, wait_s)
    with httpx.Client(base_url=url, timeout=60) as client:
        client.headers["Authorization"] = f"Bearer {sign_in(client, email, password)}"
        existing = {f["id"] for f in _check(client.get("/api/v1/functions/"), "list functions")}
        done = []
        for fn in FUNCTIONS:
            content = function_source(fn.id)
            form = {"id": fn.id, "name": fn.name, "content": content, "meta": {"description": fn.description}}
            action = "updated" if fn.id in existing else "created"
            path = f"/api/v1/functions/id/{fn.id}/update" if fn.id in existing else "/api/v1/functions/create"
            _check(client.post(path, json=form), f"{action[:-1]}e {fn.id}")
            state = _check(client.get(f"/api/v1/functions/id/{fn.id}"), f"read {fn.id}")
            if not state["is_active"]:
                _check(client.post(f"/api/v1/functions/id/{fn.id}/toggle"), f"activate {fn.id}")
            if not state["is_global"]:
                _check(client.post(f"/api/v1/functions/id/{fn.id}/toggle/global"), f"make {fn.id} global")
            valves = _valves(client, fn.id, hatcat_url, api_key)
            state = _check(client.get(f"/api/v1/functions/id/{fn.id}"), f"read {fn.id}")
            if state["content"] != content:
                raise InstallError(f"{fn.id}: OpenWebUI stored a different source than the one installed")
            if not (state["is_active"] and state["is_global"]):
                raise InstallError(f"{fn.id}: still not active and global after toggling")
            done.append({"id": fn.id, "type": state["type"], "action": action, "valves": sorted(valves)})
        return done


def _valves(client: httpx.Client, function_id: str, hatcat_url: str | None, api_key: str | None) -> dict:
    """Set the valves this function has among the ones given; returns what was set."""
    spec = _check(client.get(f"/api/v1/functions/id/{function_id}/valves/spec"), f"valves of {function_id}") or {}
    known = set((spec.get("properties") or {}).keys())
    wanted = {k: v for k, v in {"hatcat_url": hatcat_url, "api_key": api_key}.items() if v is not None and k in known}
    if not wanted:
        return {}
    current = _check(client.get(f"/api/v1/functions/id/{function_id}/valves"), f"valves of {function_id}") or {}
    _check(
        client.post(f"/api/v1/functions/id/{function_id}/valves/update", json={**current, **wanted}),
        f"set valves of {function_id}",
    )
    return wanted
