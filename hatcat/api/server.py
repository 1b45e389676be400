"""FastAPI application factory: one app per Engine, routers mounted here."""

from __future__ import annotations

from fastapi import FastAPI

from hatcat.api import health, models
from hatcat.engine import Engine


def create_api(engine: Engine) -> FastAPI:
    """The FastAPI app serving `engine` (Gradio is mounted on it by `app.py`)."""
    api = FastAPI(title="HatCat", summary="Concept monitoring and divergence for a language model")
    api.state.engine = engine
    api.include_router(health.router)
    api.include_router(models.router)
    return api
