"""Status panel: what model the engine holds and how it was loaded."""

from __future__ import annotations

import gradio as gr

from hatcat.engine import Engine


def rows(engine: Engine) -> list[list[str]]:
    return [[key, str(value)] for key, value in engine.info().items()]


def build(engine: Engine) -> tuple:
    """A read-only table of the engine's model facts, refreshed when the tab opens (packs hot-load)."""
    table = gr.Dataframe(value=rows(engine), headers=["setting", "value"], interactive=False, label="Loaded model")
    return (lambda: rows(engine)), [table], []
