"""What the routes say about a steering set — shared by chat and the steering routes."""

from __future__ import annotations

from typing import Any

from hatcat.steering import Steering


def steering_state(steerings: list[Steering], session_id: str) -> dict[str, Any]:
    """`metadata.steering`, as the original's OpenWebUI fork reads it."""
    return {"active": bool(steerings), "steerings": [steering_out(s, session_id) for s in steerings]}


def steering_out(steering: Steering, session_id: str) -> dict[str, Any]:
    return {
        "concept": steering.concept,
        "strength": steering.strength,
        "layer": steering.layer,
        "session_id": session_id,
    }
