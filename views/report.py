"""Pack report panel: every concept's quality card (sortable by grade), per-layer means over all concepts,
and the pack's family-wise firing numbers, from metrics.json and the corpus dashboards (hatcat/evidence)."""

from __future__ import annotations

import statistics

import gradio as gr
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from hatcat.engine import Engine
from views.common import NO_PACK

LAYER_HEADERS = [
    "layer",
    "concepts",
    "control FPR test (mean)",
    "corpus firing rate (mean)",
    "template AUROC (mean)",
    "with template metrics",
    "grades A/B/C/D",
]
CONCEPT_HEADERS = [
    "grade",
    "concept",
    "layer",
    "template AUROC",
    "control FPR (dev)",
    "control FPR (test)",
    "corpus firing rate",
    "natural recall",
]


def _mean(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.fmean(present), 5) if present else None


def layer_rows(cards: list[dict]) -> list[list]:
    """Per concept layer, means over every concept of the layer (template AUROC over those measured)."""
    layers = sorted({c["layer"] for c in cards if c["layer"] is not None})
    rows = []
    for layer in layers:
        mine = [c for c in cards if c["layer"] == layer]
        grades = "/".join(str(sum(c["grade"] == g for c in mine)) for g in "ABCD")
        rows.append(
            [
                layer,
                len(mine),
                _mean([c["control_fpr_test"] for c in mine]),
                _mean([c["corpus_firing_rate"] for c in mine]),
                _mean([c["template_auroc"] for c in mine]),
                sum(c["template_auroc"] is not None for c in mine),
                grades,
            ]
        )
    return rows


def concept_rows(cards: list[dict]) -> list[list]:
    """One row per concept, worst grade first (click a header to sort by another column)."""
    rows = [
        [
            c["grade"],
            c["concept"],
            c["layer"],
            c["template_auroc"],
            c["control_fpr_dev"],
            c["control_fpr_test"],
            c["corpus_firing_rate"],
            c["natural_recall"],
        ]
        for c in cards
    ]
    return sorted(rows, key=lambda r: (-"ABCD".index(r[0]), -(r[6] or 0.0)))


def figure(layers: list[list]) -> go.Figure:
    x = [f"layer {r[0]}" for r in layers]
    fig = make_subplots(
        1, 2, subplot_titles=("held-out control FPR (mean; pack target 0.01)", "reference-corpus firing rate (mean)")
    )
    fig.add_bar(x=x, y=[r[2] for r in layers], row=1, col=1, name="control FPR (test)")
    fig.add_hline(y=0.01, line_dash="dot", row=1, col=1)
    fig.add_bar(x=x, y=[r[3] for r in layers], row=1, col=2, name="corpus firing rate")
    fig.update_layout(height=360, margin={"l": 30, "r": 10, "t": 40, "b": 30}, showlegend=False)
    return fig


def firing_line(evidence: dict) -> str:
    """The family-wise firing numbers from evidence.json, as one line."""
    if not evidence:
        return "No corpus dashboards for this pack yet: `python -m hatcat.corpus evidence` builds them."
    per = evidence["expected_firings_per_token"]
    scanned = evidence["scanned"]
    return (
        f"Reference corpus: {scanned['dev'] + scanned['test']:,} tokens scanned ({scanned['test']:,} held out). "
        f"Expected concept firings per ordinary token on the held-out part: **{per['family_wise']['test']}** with the "
        f"family-wise rule (bound 0.1), {per['pack_thresholds']['test']} with the pack's own thresholds."
    )


def build(engine: Engine) -> tuple:
    head = gr.Markdown()
    plot = gr.Plot(elem_id="report-plot")
    layers = gr.Dataframe(headers=LAYER_HEADERS, label="per layer (all concepts)", interactive=False)
    concepts = gr.Dataframe(
        headers=CONCEPT_HEADERS,
        label="every concept's quality card (worst grade first; click a header to sort)",
        interactive=False,
        max_height=500,
    )

    def refresh():
        pid = engine.probe_pack_id
        if pid is None:
            return NO_PACK, None, [], []
        manifest = engine.probe_packs()[pid][1]
        cards = engine.quality_cards()
        grades = {g: sum(c["grade"] == g for c in cards) for g in "ABCD"}
        info = (
            f"**{pid}** · {len(manifest['concepts'])} concepts · tap layer {manifest['tap_layer']} · pooling {manifest['pooling']} · "
            f"trained {manifest.get('training', {}).get('created', '?')} · grades "
            + ", ".join(f"{g}: {n}" for g, n in grades.items())
            + "\n\n"
            + firing_line(engine.evidence_info())
        )
        rows = layer_rows(cards)
        return info, figure(rows), rows, concept_rows(cards)

    return refresh, [head, plot, layers, concepts], []
