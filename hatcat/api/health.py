"""GET /health: readiness for Docker's healthcheck and humans."""

from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/health")
def health(request: Request) -> dict[str, object]:
    """Ready once the engine exists (the app is only served after the model loaded)."""
    return {"status": "ok", **request.app.state.engine.info()}
