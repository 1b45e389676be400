"""Steering per session: add, update, remove, list, clear (`session_id` in the body or the query).

A concept without a probe in the loaded pack is a 404 that names it; so is removing or
updating a concept the session does not steer. The steerings apply to the session's next
chat completions (`session_id` in the chat request).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from hatcat.access import Role
from hatcat.api.auth import requires, session_key
from hatcat.api.errors import APIError, error_responses
from hatcat.api.protocol import DEFAULT_SESSION, SteeringAdd, SteeringCleared, SteeringList, SteeringOut, SteeringUpdate
from hatcat.api.records import audit
from hatcat.api.reports import steering_out
from hatcat.engine import Engine
from hatcat.steering import Steering, UnknownConcept

router = APIRouter(
    prefix="/v1/steering",
    responses=error_responses(400, 401, 403, 404, 409, 503),
    dependencies=[Depends(requires(Role.researcher, "steering"))],
)

SessionQuery = Query(DEFAULT_SESSION, min_length=1, max_length=128)


def _not_steered(concept: str, session_id: str) -> APIError:
    return APIError(
        404, f"concept {concept} is not steered in session {session_id}", param="concept", code="steering_not_found"
    )


@router.post("/add", response_model=SteeringOut)
def add(body: SteeringAdd, request: Request) -> dict[str, Any]:
    engine: Engine = request.app.state.engine
    engine.check_steering(body.concept, body.layer)
    audit(request, "steering_added", body.concept, session=body.session_id, strength=body.strength, layer=body.layer)
    steering = engine.steering.add(
        session_key(request, body.session_id), Steering(body.concept, body.strength, body.layer)
    )
    return steering_out(steering, body.session_id)


@router.patch("/update/{concept}", response_model=SteeringOut)
def update(concept: str, body: SteeringUpdate, request: Request) -> dict[str, Any]:
    engine: Engine = request.app.state.engine
    engine.check_steering(concept, body.layer)
    audit(request, "steering_changed", concept, session=body.session_id, strength=body.strength, layer=body.layer)
    try:
        steering = engine.steering.update(
            session_key(request, body.session_id), concept, strength=body.strength, layer=body.layer
        )
    except UnknownConcept:
        raise _not_steered(concept, body.session_id) from None
    return steering_out(steering, body.session_id)


@router.delete("/remove/{concept}", response_model=SteeringOut)
def remove(concept: str, request: Request, session_id: str = SessionQuery) -> dict[str, Any]:
    engine: Engine = request.app.state.engine
    engine.require_probes("steering")
    audit(request, "steering_removed", concept, session=session_id)
    try:
        steering = engine.steering.remove(session_key(request, session_id), concept)
    except UnknownConcept:
        raise _not_steered(concept, session_id) from None
    return steering_out(steering, session_id)


@router.get("/list", response_model=SteeringList)
def list_steerings(request: Request, session_id: str = SessionQuery) -> dict[str, Any]:
    engine: Engine = request.app.state.engine
    return {
        "session_id": session_id,
        "steerings": [steering_out(s, session_id) for s in engine.steering.list(session_key(request, session_id))],
    }


@router.delete("/clear", response_model=SteeringCleared)
def clear(request: Request, session_id: str = SessionQuery) -> dict[str, Any]:
    engine: Engine = request.app.state.engine
    audit(request, "steering_cleared", session_id)
    return {"session_id": session_id, "removed": engine.steering.clear(session_key(request, session_id))}
