"""Gradio panels, one per file, each `build(engine)`; `build_workbench` stacks them in tabs."""

from __future__ import annotations

import gradio as gr

from hatcat.engine import Engine
from views import status


def build_workbench(engine: Engine) -> gr.Blocks:
    """The whole browser workbench around one engine."""
    with gr.Blocks(title="HatCat workbench") as blocks:
        gr.Markdown("# HatCat workbench")
        with gr.Tabs():
            with gr.Tab("Status"):
                status.build(engine)
    return blocks
