"""Pack report panel: per layer and per concept, the loaded pack's control-corpus FPR, natural recall and
template metrics (a secondary view), from its metrics.json."""

from __future__ import annotations

import gradio as gr
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from hatcat.engine import Engine
from views.common import NO_PACK

LAYER_HEADERS = ["layer", "concepts", "held-out control FPR (mean)", "template F1 (sample)", "template AUROC (sample)"]
CONCEPT_HEADERS = [
    "concept",
    "layer",
    "threshold",
    "control FPR (dev)",
    "control FPR (held out)",
    "natural recall",
    "natural texts",
    "template F1",
    "template AUROC",
]


def layer_rows(metrics: dict) -> list[list]:
    return [
        [int(layer), v["n"], v.get("mean_control_fpr_test"), v.get("mean_f1"), v.get("mean_auroc")]
        for layer, v in sorted(metrics.get("per_layer", {}).items(), key=lambda kv: int(kv[0]))
    ]


def concept_rows(metrics: dict) -> list[list]:
    rows = [
        [
            c,
            m["layer"],
            m["threshold"],
            m.get("control_fpr_dev"),
            m.get("control_fpr_test"),
            m.get("natural_recall"),
            m.get("n_natural"),
            m.get("f1"),
            m.get("auroc"),
        ]
        for c, m in metrics.get("per_concept", {}).items()
    ]
    # concepts with natural texts first, weakest natural recall first; then the rest by held-out FPR, worst first
    return sorted(rows, key=lambda r: (r[5] is None, r[5] if r[5] is not None else -(r[4] or 0.0)))


def figure(metrics: dict) -> go.Figure:
    layers = sorted(metrics.get("per_layer", {}).items(), key=lambda kv: int(kv[0]))
    x = [f"layer {k}" for k, _ in layers]
    fig = make_subplots(1, 2, subplot_titles=("held-out control FPR (target 0.01)", "template F1 / AUROC (sample)"))
    fig.add_bar(x=x, y=[v.get("mean_control_fpr_test") for _, v in layers], row=1, col=1, name="control FPR")
    fig.add_hline(y=0.01, line_dash="dot", row=1, col=1)
    fig.add_bar(x=x, y=[v.get("mean_f1") for _, v in layers], row=1, col=2, name="template F1")
    fig.add_bar(x=x, y=[v.get("mean_auroc") for _, v in layers], row=1, col=2, name="template AUROC")
    fig.update_layout(height=360, margin={"l": 30, "r": 10, "t": 40, "b": 30}, yaxis2={"range": [0, 1]})
    return fig


def build(engine: Engine) -> tuple:
    head = gr.Markdown()
    plot = gr.Plot(elem_id="report-plot")
    layers = gr.Dataframe(headers=LAYER_HEADERS, label="per layer", interactive=False)
    concepts = gr.Dataframe(
        headers=CONCEPT_HEADERS,
        label="per concept (weakest natural recall first)",
        interactive=False,
        max_height=400,
    )

    def refresh():
        pid = engine.probe_pack_id
        if pid is None:
            return NO_PACK, None, [], []
        (folder, manifest, _), m = engine.probe_packs()[pid], engine.probe_metrics()
        info = (
            f"**{pid}** · {len(manifest['concepts'])} concepts · tap layer {manifest['tap_layer']} · pooling {manifest['pooling']} · "
            f"trained {manifest.get('training', {}).get('created', '?')} · `{folder}`"
        )
        return info, figure(m), layer_rows(m), concept_rows(m)

    return refresh, [head, plot, layers, concepts], []
