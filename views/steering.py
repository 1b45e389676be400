"""Steering panel: this browser session's steerings, and steered vs unsteered side by side."""

from __future__ import annotations

import gradio as gr

from hatcat.access import Role
from hatcat.engine import Engine
from hatcat.errors import HatCatError
from hatcat.steering import Steering, UnknownConcept
from views import trace as tr
from views.access import audit, guard
from views.common import require_probes, run_trace, settings_from, user_error

HEADERS = ["concept", "strength", "layer"]
TAP = "tap layer"


def session_of(request: gr.Request | None) -> str:
    return f"workbench:{request.session_hash if request else 'default'}"


def rows(engine: Engine, session: str) -> list[list]:
    return [[s.concept, s.strength, "tap" if s.layer is None else s.layer] for s in engine.steering.list(session)]


def build(engine: Engine) -> tuple:
    gr.Markdown(
        "Strength is in units of the block's typical hidden-state norm: useful values lie around 0.05–0.5; negative steers away."
    )
    with gr.Row():
        concept = gr.Dropdown([], label="concept", scale=3)
        strength = gr.Slider(-1, 1, value=0.15, step=0.05, label="strength", scale=3)
        layer = gr.Dropdown([TAP, *range(len(engine.loaded.layers))], value=TAP, label="decoder block", scale=1)
    with gr.Row():
        add = gr.Button("add / change", variant="primary")
        remove = gr.Button("remove")
        clear = gr.Button("clear all")
    table = gr.Dataframe(headers=HEADERS, label="this session's steerings", interactive=False, elem_id="steering-table")
    with gr.Row():
        prompt = gr.Textbox(label="prompt", value="My favourite thing to do on a weekend is", scale=4)
        max_tokens = gr.Slider(1, 128, value=12, step=1, label="max tokens", scale=1)
        seed = gr.Number(value=0, precision=0, label="seed", scale=1)
    compare = gr.Button("compare steered and unsteered")
    with gr.Row():
        with gr.Column():
            gr.Markdown("**unsteered**")
            plain = gr.HTML(tr.heatmap_html([]))
            plain_md = gr.Markdown()
        with gr.Column():
            gr.Markdown("**steered**")
            steered = gr.HTML(tr.heatmap_html([]), elem_id="steering-steered")
            steered_md = gr.Markdown()

    @guard(engine, Role.researcher, "steering")
    def change(c: str, s: float, block: str | int, request: gr.Request):
        require_probes(engine)
        steering_layer = None if block in (None, TAP) else int(block)
        try:
            engine.check_steering(c, steering_layer)
            audit(engine, "steering_added", c, session=session_of(request), strength=float(s))
            engine.steering.add(session_of(request), Steering(c, float(s), steering_layer))
        except (ValueError, HatCatError) as err:
            raise user_error(err) from None
        return rows(engine, session_of(request))

    @guard(engine, Role.researcher, "steering")
    def drop(c: str, request: gr.Request):
        audit(engine, "steering_removed", c, session=session_of(request))
        try:
            engine.steering.remove(session_of(request), c)
        except UnknownConcept as err:
            raise user_error(ValueError(f"{err} is not steered in this session")) from None
        return rows(engine, session_of(request))

    @guard(engine, Role.researcher, "steering")
    def clear_all(request: gr.Request):
        audit(engine, "steering_cleared", session_of(request))
        engine.steering.clear(session_of(request))
        return []

    @guard(engine, Role.researcher, "steering")
    def side_by_side(text: str, n: float, seed_value: float | None, request: gr.Request):
        steerings = engine.steering.list(session_of(request))
        if not steerings:
            raise gr.Error("Add a steering first.", print_exception=False)
        settings = settings_from(n, 0.7, 0 if seed_value is None else seed_value)  # sampled, same seed on both sides
        base, base_sum = run_trace(engine, text, settings)
        pushed, pushed_sum = run_trace(engine, text, settings, steerings)
        return (
            tr.heatmap_html(base),
            tr.analysis_markdown(base_sum, base),
            tr.heatmap_html(pushed),
            tr.analysis_markdown(pushed_sum, pushed),
        )

    add.click(change, [concept, strength, layer], table, api_name=False)
    remove.click(drop, concept, table, api_name=False)
    clear.click(clear_all, None, table, api_name=False)
    compare.click(
        side_by_side, [prompt, max_tokens, seed], [plain, plain_md, steered, steered_md], api_name="steer_compare"
    )

    def refresh(request: gr.Request):
        choices = engine.probe_concepts()
        return gr.Dropdown(choices=choices, value=choices[0] if choices else None), rows(engine, session_of(request))

    return refresh, [concept, table], []
