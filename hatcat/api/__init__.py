"""HTTP API served from the same process as the workbench: health and OpenAI-style routes."""

from hatcat.api.server import create_api

__all__ = ["create_api"]
