"""A trace (list of `TokenRecord.to_dict(top=None)`) rendered: heatmap HTML, divergence plot, token table, exports.

One place for these so the Monitor, Steering and Thresholds panels draw traces the same way.
"""

from __future__ import annotations

import csv
import html
import json
import tempfile
from pathlib import Path

import plotly.graph_objects as go

from hatcat.heatmap import DIVERGENCE_LEGEND, STYLE, token_span, trace_html

BY_DIVERGENCE = "divergence"


def activation_of(record: dict, concept: str) -> float | None:
    """The concept's activation on this token, or None when the monitor did not report it."""
    concepts = record["divergence"]["top_divergences"]
    return next((c["activation"] for c in concepts if c["concept"] == concept), None)


def activation_colour(value: float) -> str:
    """White at 0 to green at 1."""
    fade = int(255 * (1 - max(0.0, min(1.0, value))))
    return f"#{fade:02x}ff{fade:02x}"


def heatmap_html(records: list[dict], colour_by: str = BY_DIVERGENCE, threshold: float | None = None) -> str:
    """Token spans coloured by divergence (red: represented but unsaid) or by one concept's activation.

    With a concept and a `threshold`, tokens where it fires are outlined (the highlights)."""
    if not records:
        return STYLE + '<div class="hc-trace hc-empty">No trace yet: run a prompt.</div>'
    spans = []
    for r in records:
        if colour_by == BY_DIVERGENCE:
            spans.append(token_span(r, r["color"]))
        else:
            act = activation_of(r, colour_by) or 0.0
            spans.append(token_span(r, activation_colour(act), hit=threshold is not None and act >= threshold))
    legend = (
        DIVERGENCE_LEGEND
        if colour_by == BY_DIVERGENCE
        else f"colour: activation of {html.escape(colour_by)} (outlined: at or above its threshold)"
    )
    return trace_html(spans, legend)


def divergence_figure(records: list[dict], concept: str | None = None, threshold: float | None = None) -> go.Figure:
    """Max divergence per token (and a chosen concept's activation) as lines over the token index."""
    fig = go.Figure()
    x = [r["index"] for r in records]
    labels = [r["token"] for r in records]
    fig.add_scatter(
        x=x,
        y=[r["divergence"]["max_divergence"] for r in records],
        mode="lines+markers",
        name="max divergence",
        text=labels,
    )
    if concept and concept != BY_DIVERGENCE:
        fig.add_scatter(
            x=x,
            y=[activation_of(r, concept) for r in records],
            mode="lines+markers",
            name=f"{concept} activation",
            text=labels,
        )
        if threshold is not None:
            fig.add_hline(y=threshold, line_dash="dot", annotation_text="threshold")
    fig.update_layout(
        height=280,
        margin={"l": 40, "r": 10, "t": 30, "b": 30},
        xaxis_title="token",
        yaxis_title="score",
        legend={"orientation": "h", "y": 1.15},
    )
    return fig


def token_rows(records: list[dict], index: float | None) -> list[list]:
    """A token's reported concepts as table rows (concept, layer, activation, text, divergence)."""
    if not records or index is None:
        return []
    record = records[max(0, min(int(index), len(records) - 1))]
    return [
        [c["concept"], c["layer"], c["activation"], c["text_similarity"], c["divergence"]]
        for c in record["divergence"]["top_divergences"]
    ]


BEHAVIOURS_CAVEAT = (
    "Measured on the model's own wrong answers (README, Behaviour benchmark): `falsehood` flags them at test "
    "AUROC 0.75, no better than the answer's lowest token probability (0.77)."
)
TOKEN_HEADERS = ["concept", "layer", "activation", "text-side", "divergence"]


def analysis_markdown(summary: dict | None, records: list[dict]) -> str:
    if summary is None:
        return f"Generating… {len(records)} tokens so far."
    rows = "\n".join(
        f"| {c['concept']} | {c['tokens']} | {c['mean_divergence']:+.3f} | {c['score']:.3f} |"
        for c in summary["top_concepts"]
    )
    table = f"\n\n| concept | tokens fired | mean divergence | rank score |\n|---|---|---|---|\n{rows}" if rows else ""
    return f"**{summary['line']}** (finish: {summary.get('finish_reason', '?')}){behaviours_markdown(summary)}{table}"


def behaviours_markdown(summary: dict) -> str:
    """The response's behaviour read-outs (hatcat.readouts), with what the benchmark measured of them."""
    found = summary.get("behaviours") or {}
    if not found:
        return ""
    scores = ", ".join(
        f"{name} {b['score']:+.2f} (threshold {b['threshold']:+.2f}{', fired' if b['fired'] else ''})"
        for name, b in found.items()
    )
    return f"\n\nBehaviours: {scores}. {BEHAVIOURS_CAVEAT}"


def export_files(records: list[dict], summary: dict | None) -> tuple[str, str]:
    """Write the trace as JSONL (one record a line, then the summary) and CSV (one row per token x concept)."""
    folder = Path(tempfile.mkdtemp(prefix="hatcat-trace-"))
    jsonl, table = folder / "trace.jsonl", folder / "trace.csv"
    with jsonl.open("w") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")
        if summary:
            out.write(json.dumps({"summary": summary}) + "\n")
    with table.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            ["index", "token", "max_divergence", "concept", "layer", "activation", "text_similarity", "divergence"]
        )
        for r in records:
            for c in r["divergence"]["top_divergences"] or [
                {"concept": "", "layer": "", "activation": "", "text_similarity": "", "divergence": ""}
            ]:
                writer.writerow(
                    [
                        r["index"],
                        r["token"],
                        r["divergence"]["max_divergence"],
                        c["concept"],
                        c["layer"],
                        c["activation"],
                        c["text_similarity"],
                        c["divergence"],
                    ]
                )
    return str(jsonl), str(table)
