"""Pack report panel: per-layer F1/AUROC of the loaded probe pack (both sides) from its metrics.json."""

from __future__ import annotations

import gradio as gr
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from hatcat.engine import Engine
from views.common import NO_PACK

SIDES = (("activation", lambda m: m), ("text", lambda m: m.get("text", {})))
COLOURS = {"activation": "#3b6fd8", "text": "#2aa876"}
LAYER_HEADERS = ["side", "layer", "concepts", "mean F1", "mean AUROC"]
CONCEPT_HEADERS = [
    "concept",
    "layer",
    "F1",
    "AUROC",
    "precision",
    "recall",
    "FPR (all negatives)",
    "threshold",
    "text F1",
    "text AUROC",
]


def layer_rows(metrics: dict) -> list[list]:
    return [
        [side, int(layer), v["n"], v["mean_f1"], v["mean_auroc"]]
        for side, pick in SIDES
        for layer, v in sorted(pick(metrics).get("per_layer", {}).items(), key=lambda kv: int(kv[0]))
    ]


def concept_rows(metrics: dict) -> list[list]:
    text = metrics.get("text", {}).get("per_concept", {})
    rows = [
        [
            c,
            m["layer"],
            m["f1"],
            m["auroc"],
            m["precision"],
            m["recall"],
            m["fpr_all_negatives"],
            m["threshold"],
            text.get(c, {}).get("f1"),
            text.get(c, {}).get("auroc"),
        ]
        for c, m in metrics.get("per_concept", {}).items()
    ]
    return sorted(rows, key=lambda r: (r[2] is None, r[2] or 0.0))  # weakest probes first


def figure(metrics: dict) -> go.Figure:
    fig = make_subplots(1, 2, subplot_titles=("mean F1 by concept layer", "mean AUROC by concept layer"))
    for side, pick in SIDES:
        layers = sorted(pick(metrics).get("per_layer", {}).items(), key=lambda kv: int(kv[0]))
        x = [f"layer {k}" for k, _ in layers]
        style = {"name": f"{side} side", "legendgroup": side, "marker_color": COLOURS[side]}
        fig.add_bar(x=x, y=[v["mean_f1"] for _, v in layers], row=1, col=1, **style)
        fig.add_bar(x=x, y=[v["mean_auroc"] for _, v in layers], row=1, col=2, showlegend=False, **style)
    fig.update_layout(
        height=360, margin={"l": 30, "r": 10, "t": 40, "b": 30}, yaxis={"range": [0, 1]}, yaxis2={"range": [0, 1]}
    )
    return fig


def build(engine: Engine) -> tuple:
    head = gr.Markdown()
    plot = gr.Plot(elem_id="report-plot")
    layers = gr.Dataframe(headers=LAYER_HEADERS, label="per layer", interactive=False)
    concepts = gr.Dataframe(
        headers=CONCEPT_HEADERS,
        label="per concept (held-out test split, weakest first)",
        interactive=False,
        max_height=400,
    )

    def refresh():
        if engine.probes is None:
            return NO_PACK, None, [], []
        p, m = engine.probes, engine.probes.metrics
        info = (
            f"**{p.id}** · {len(p.concepts)} concepts · tap layer {p.manifest['tap_layer']} · pooling {p.manifest['pooling']} · "
            f"trained {p.manifest.get('training', {}).get('created', '?')} · `{p.folder}`"
        )
        return info, figure(m), layer_rows(m), concept_rows(m)

    return refresh, [head, plot, layers, concepts], []
