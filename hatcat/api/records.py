"""The record store over HTTP: divergence events and their review, the audit log, threshold profiles.

GET /v1/events, GET /v1/audit and POST /v1/events/review (admin) read events and the audit log
and mark events; GET /v1/profiles (any user), PUT /v1/profiles/{name} (researcher: their own),
POST /v1/profiles/{name}/apply (admin: the global thresholds every client is monitored with).
A write the store cannot take is a 503 that says why; generation never depends on it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from hatcat.access import Role
from hatcat.api.auth import actor, caller, requires
from hatcat.api.errors import APIError, error_responses
from hatcat.api.protocol import ProfileBody, ReviewBody
from hatcat.engine import Engine
from hatcat.store import Store, StoreWriteError

router = APIRouter(prefix="/v1", responses=error_responses(400, 401, 403, 503))

ProfileName = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


def store_of(engine: Engine) -> Store:
    if engine.records is None:
        raise APIError(503, "this server runs without a record store", code="store_unavailable")
    return engine.records


def audit(request: Request, action: str, target: str, **detail: Any) -> None:
    """Record an action before it is done; a store that cannot take it stops the action (503)."""
    engine: Engine = request.app.state.engine
    if engine.records is not None:
        try:
            engine.records.audit(actor(request), action, target, **detail)
        except StoreWriteError as err:
            raise APIError(503, f"not done: {err}", code="store_unavailable") from None


@router.get("/events", dependencies=[Depends(requires(Role.admin, "reading divergence events"))])
def list_events(
    request: Request,
    concept: str | None = Query(None, max_length=200),
    user: str | None = Query(None, max_length=64),
    since: datetime | None = None,
    until: datetime | None = None,
    min_score: float | None = Query(None, ge=0.0, le=1.0),
    review: Literal["none", "reviewed", "true_positive", "false_positive"] | None = None,
    limit: int = Query(200, ge=1, le=10_000),
) -> dict[str, Any]:
    events = store_of(request.app.state.engine).events(concept, user, since, until, min_score, review, limit)
    return {"object": "list", "data": events}


@router.post("/events/review", dependencies=[Depends(requires(Role.admin, "reviewing events"))])
def review_events(body: ReviewBody, request: Request) -> dict[str, Any]:
    found = store_of(request.app.state.engine).mark(body.ids, body.review, actor(request))  # 503 when it cannot
    return {"object": "review", "review": body.review, "marked": found}


@router.get("/audit", dependencies=[Depends(requires(Role.admin, "reading the audit log"))])
def list_audit(
    request: Request,
    user: str | None = Query(None, max_length=64),
    action: str | None = Query(None, max_length=64),
    limit: int = Query(200, ge=1, le=10_000),
) -> dict[str, Any]:
    return {"object": "list", "data": store_of(request.app.state.engine).audit_log(user, action, limit)}


@router.get("/profiles")
def list_profiles(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": store_of(request.app.state.engine).profiles()}


@router.put("/profiles/{name}", dependencies=[Depends(requires(Role.researcher, "saving a threshold profile"))])
def save_profile(name: ProfileName, body: ProfileBody, request: Request) -> dict[str, Any]:
    engine: Engine = request.app.state.engine
    pack = engine.require_probes("threshold profiles").probes
    unknown = sorted(set(body.thresholds) - set(pack.concepts))
    if unknown:
        message = f"no probe for {', '.join(unknown[:5])} in the loaded pack {pack.id}"
        raise APIError(400, message, param="thresholds", code="concept_not_found")
    user = caller(request)
    # another owner's profile: 403; a store that cannot write: 503 (both HatCatErrors)
    store_of(engine).save_profile(
        name, actor(request), pack.id, body.thresholds, admin=user is None or user.role >= Role.admin
    )
    return store_of(engine).profile(name)


@router.post(
    "/profiles/{name}/apply", dependencies=[Depends(requires(Role.admin, "applying thresholds to the monitor"))]
)
def apply_profile(name: ProfileName, request: Request) -> dict[str, Any]:
    engine: Engine = request.app.state.engine
    pack_id = engine.require_probes("threshold profiles").probes.id
    store = store_of(engine)
    profile = store.profile(name)
    if profile is None:
        raise APIError(404, f"no threshold profile {name}", param="name", code="profile_not_found")
    audit(request, "thresholds_applied", name, probe_pack=pack_id)
    skipped = engine.apply_thresholds(profile["thresholds"], reset=True)
    applied = len(profile["thresholds"]) - len(skipped)
    return {"object": "profile_applied", "name": name, "applied": applied, "skipped": skipped}
