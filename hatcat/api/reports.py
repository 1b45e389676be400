"""What the routes say about a token, a steering set and a failure — shared by chat and analyze."""

from __future__ import annotations

from typing import Any

from hatcat.monitor import TokenRecord
from hatcat.steering import Steering

TOP_DIVERGENCES = 10  # concepts per token in `top_divergences`, highest divergence first


def divergence(record: TokenRecord) -> dict[str, Any]:
    """`metadata.divergence` of a streamed chunk: the token's max and its top concepts by divergence."""
    top = sorted(record.concepts, key=lambda c: -c.divergence)[:TOP_DIVERGENCES]
    return {"max_divergence": record.max_divergence, "top_divergences": [c._asdict() for c in top]}


def token_report(record: TokenRecord) -> dict[str, Any]:
    return {"index": record.index, "token": record.token, "color": record.colour, "divergence": divergence(record)}


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
