"""Entry point: settings -> Engine -> FastAPI (+ Gradio mounted at /) -> uvicorn.

python app.py            # serves on HATCAT_HOST:HATCAT_PORT (default 127.0.0.1:8765); also `hatcat serve`
"""

from __future__ import annotations

import argparse
import sys

import gradio as gr
import uvicorn
from fastapi import FastAPI

from hatcat.api import create_api
from hatcat.config import Settings
from hatcat.engine import Engine
from hatcat.errors import HatCatError
from views import build_workbench


def build_app(engine: Engine) -> FastAPI:
    """The API routes first, then the workbench at `/` (routes defined earlier win). With access
    control the workbench and its Gradio API need a login: a user's password or one of their keys."""
    return gr.mount_gradio_app(
        create_api(engine),
        build_workbench(engine),
        path="/",
        auth=engine.users.login if engine.users else None,  # a User (truthy) or None
        auth_message="HatCat: log in with your name and password (or one of your API keys).",
    )


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="hatcat serve",
        description="Serve the OpenAI-compatible API under /v1 and the workbench at / on HATCAT_HOST:HATCAT_PORT.",
        epilog="Every setting is a HATCAT_* environment variable (README, Settings); a bad one exits 2.",
    ).parse_args(argv)
    try:
        settings = Settings.from_env()
        engine = Engine.from_settings(settings)
    except HatCatError as err:
        print(f"hatcat: {err}", file=sys.stderr)
        return 2
    uvicorn.run(build_app(engine), host=settings.host, port=settings.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
