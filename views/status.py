"""Status panel: what model the engine holds and how it was loaded."""

from __future__ import annotations

import gradio as gr

from hatcat.engine import Engine


def build(engine: Engine) -> None:
    """A read-only table of the engine's model facts."""
    rows = [[key, str(value)] for key, value in engine.info().items()]
    gr.Dataframe(value=rows, headers=["setting", "value"], interactive=False, label="Loaded model")
