"""GET /v1/models in the OpenAI list format."""

from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter(prefix="/v1")

MONITOR_MODEL_ID = "hatcat-divergence"


@router.get("/models")
def list_models(request: Request) -> dict[str, object]:
    """The divergence-monitoring model every client can select."""
    engine = request.app.state.engine
    created = int(engine.loaded_at)
    return {
        "object": "list",
        "data": [{"id": MONITOR_MODEL_ID, "object": "model", "created": created, "owned_by": "hatcat"}],
    }
