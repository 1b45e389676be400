"""Gradio panels, one per file, each `build(engine)`; `build_workbench` stacks them in tabs.

A panel's `build` returns None or `(refresh, outputs, inputs)`: the workbench calls `refresh`
when the page loads and when its tab is opened, so choices follow a hot-loaded probe pack.
Panels that read the current trace get the shared `gr.State` holding it.
"""

from __future__ import annotations

import gradio as gr

from hatcat.engine import Engine
from views import graph, monitor, report, review, status, steering, thresholds, training


def build_workbench(engine: Engine) -> gr.Blocks:
    """The whole browser workbench around one engine."""
    with gr.Blocks(title="HatCat workbench") as blocks:
        gr.Markdown("# HatCat workbench")
        trace = gr.State([])  # the Monitor's latest trace: list of TokenRecord dicts
        panels = (
            ("Monitor", lambda: monitor.build(engine, trace)),
            ("Concept graph", lambda: graph.build(engine, trace)),
            ("Thresholds", lambda: thresholds.build(engine, trace)),
            ("Steering", lambda: steering.build(engine)),
            ("Training", lambda: training.build(engine)),
            ("Pack report", lambda: report.build(engine)),
            ("Review", lambda: review.build(engine)),
            ("Status", lambda: status.build(engine)),
        )
        with gr.Tabs():
            for name, build in panels:
                with gr.Tab(name, elem_id=f"tab-{name.lower().replace(' ', '-')}") as tab:
                    refresh = build()
                if refresh:
                    fn, outputs, inputs = refresh
                    tab.select(fn, inputs, outputs, api_name=False)
                    blocks.load(fn, inputs, outputs, api_name=False)
    return blocks
