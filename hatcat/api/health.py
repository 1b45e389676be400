"""GET /health: readiness for Docker's healthcheck and humans (never needs the API key)."""

from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/health")
def health(request: Request) -> dict[str, object]:
    """Ready once the engine exists (the app is only served after the model loaded)."""
    engine = request.app.state.engine
    return {"status": "ok", **engine.info(), "queue_depth": engine.queue_depth}
