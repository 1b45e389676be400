"""Monitor/chat panel: a prompt streams into a token heatmap, a divergence plot and the analysis."""

from __future__ import annotations

import gradio as gr

from hatcat.access import Role
from hatcat.engine import Engine
from views import trace as tr
from views.access import guard
from views.common import settings_from, stream_trace


def build(engine: Engine, trace: gr.State) -> tuple:
    """The panel; returns (refresh function, its outputs) for the workbench to call on load."""
    with gr.Row():
        prompt = gr.Textbox(
            label="Prompt",
            value="Tell me a short story about a frightened musician.",
            lines=2,
            scale=4,
            elem_id="monitor-prompt",
        )
        with gr.Column(scale=1):
            max_tokens = gr.Slider(1, 256, value=24, step=1, label="max tokens", elem_id="monitor-tokens")
            temperature = gr.Slider(0, 2, value=0, step=0.05, label="temperature (0 = greedy)")
            seed = gr.Number(value=0, precision=0, label="seed")
    with gr.Row():
        run = gr.Button("Generate and monitor", variant="primary", elem_id="monitor-run")
        colour_by = gr.Dropdown(
            [tr.BY_DIVERGENCE], value=tr.BY_DIVERGENCE, label="colour tokens by", allow_custom_value=False
        )
    heatmap = gr.HTML(tr.heatmap_html([]), elem_id="monitor-heatmap")
    plot = gr.Plot(label="divergence over tokens", elem_id="monitor-plot")
    analysis = gr.Markdown(elem_id="monitor-analysis")
    with gr.Row():
        token = gr.Number(value=0, precision=0, label="token # (its top concepts)", scale=1)
        table = gr.Dataframe(headers=tr.TOKEN_HEADERS, label="selected token", interactive=False, scale=4)
    with gr.Row():
        jsonl = gr.File(label="trace.jsonl", height=90)
        csv = gr.File(label="trace.csv", height=90)
    with gr.Accordion("raw trace (JSON)", open=False):
        raw = gr.JSON()

    @guard(engine, Role.viewer, "monitoring")
    def generate(text: str, n: float, temp: float, seed_value: float | None, concept: str):
        settings = settings_from(n, temp, seed_value)
        threshold = engine.threshold(concept)
        for records, summary in stream_trace(engine, text, settings):
            files = tr.export_files(records, summary) if summary else (None, None)
            yield (
                tr.heatmap_html(records, concept, threshold),
                tr.divergence_figure(records, concept, threshold),
                tr.analysis_markdown(summary, records),
                records,
                {"records": records, "summary": summary},
                *files,
            )

    def recolour(records: list[dict], concept: str):
        threshold = engine.threshold(concept)
        return tr.heatmap_html(records, concept, threshold), tr.divergence_figure(records, concept, threshold)

    run.click(
        generate,
        [prompt, max_tokens, temperature, seed, colour_by],
        [heatmap, plot, analysis, trace, raw, jsonl, csv],
        api_name="monitor",
    )
    colour_by.change(recolour, [trace, colour_by], [heatmap, plot], api_name=False)
    token.change(tr.token_rows, [trace, token], table, api_name=False)
    trace.change(tr.token_rows, [trace, token], table, api_name=False)

    def refresh():
        return gr.Dropdown(choices=[tr.BY_DIVERGENCE, *engine.probe_concepts()])

    return refresh, [colour_by], []
