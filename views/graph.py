"""Concept graph panel: the hierarchy around what fired (ancestors and children) as a plotly network, and
the picked concept's definition, quality card and corpus contexts (top and random, firing token marked)."""

from __future__ import annotations

from collections import defaultdict

import gradio as gr
import networkx as nx
import plotly.graph_objects as go

from hatcat.concepts import ConceptPack
from hatcat.engine import Engine
from views.evidence import card_markdown, examples_markdown

MAX_FIRED = 12  # concepts of the trace placed in the graph, highest activation first
MAX_CHILDREN = 6


def fired_scores(records: list[dict]) -> dict[str, tuple[float, float]]:
    """Per concept in the trace: (max activation, mean divergence)."""
    acts, divs = defaultdict(list), defaultdict(list)
    for r in records:
        for c in r["divergence"]["top_divergences"]:
            acts[c["concept"]].append(c["activation"])
            divs[c["concept"]].append(c["divergence"])
    return {c: (max(acts[c]), sum(divs[c]) / len(divs[c])) for c in acts}


def neighbourhood(pack: ConceptPack, centres: list[str]) -> nx.DiGraph:
    """Centres, their ancestors up to a root, and some of their children (edges parent -> child)."""
    nodes = set()
    for c in centres:
        nodes |= {c, *pack.ancestors(c), *pack.children(c)[:MAX_CHILDREN]}
    return pack.graph.subgraph(nodes).copy()


def figure(
    pack: ConceptPack, graph: nx.DiGraph, scores: dict[str, tuple[float, float]], selected: str | None
) -> go.Figure:
    """Nodes in rows by concept layer; size = activation, colour = divergence (red: unsaid)."""
    for node in graph:
        graph.nodes[node]["layer"] = pack[node].layer
    pos = nx.multipartite_layout(graph, subset_key="layer", align="horizontal") if len(graph) else {}
    ex, ey = [], []
    for a, b in graph.edges:
        ex += [pos[a][0], pos[b][0], None]
        ey += [-pos[a][1], -pos[b][1], None]
    nodes = list(graph)
    act = [scores.get(n, (0.0, 0.0))[0] for n in nodes]
    div = [scores.get(n, (0.0, 0.0))[1] for n in nodes]
    fig = go.Figure()
    fig.add_scatter(x=ex, y=ey, mode="lines", line={"color": "#bbb", "width": 1}, hoverinfo="skip", showlegend=False)
    fig.add_scatter(
        x=[pos[n][0] for n in nodes],
        y=[-pos[n][1] for n in nodes],
        mode="markers+text",
        text=nodes,
        textposition=["top center" if i % 2 else "bottom center" for i in range(len(nodes))],
        marker={
            "size": [10 + 40 * a for a in act],
            "color": div,
            "colorscale": "RdBu_r",
            "cmin": -1,
            "cmax": 1,
            "colorbar": {"title": "divergence"},
            "line": {"width": [4 if n == selected else 1 for n in nodes], "color": "#222"},
        },
        customdata=[[pack[n].layer, a, d] for n, a, d in zip(nodes, act, div)],
        hovertemplate="%{text}<br>layer %{customdata[0]}<br>activation %{customdata[1]:.2f}<br>divergence %{customdata[2]:+.2f}<extra></extra>",
        showlegend=False,
    )
    fig.update_layout(
        height=520, margin={"l": 10, "r": 10, "t": 10, "b": 10}, xaxis={"visible": False}, yaxis={"visible": False}
    )
    return fig


def details(engine: Engine, concept: str | None) -> str:
    """Definition, layer, parents/children and the probe's held-out metrics, as Markdown."""
    if not concept or concept not in engine.concepts:
        return "Pick a concept."
    c = engine.concepts[concept]
    lines = [
        f"### {c.id}",
        c.definition or "*(no definition)*",
        f"**layer** {c.layer} · **source** {c.source}",
        f"**parents** {', '.join(c.parents) or '—'}",
        f"**children** {', '.join(c.children[:20]) or '—'}{' …' if len(c.children) > 20 else ''}",
    ]
    m = engine.probe_metrics().get("per_concept", {}).get(concept)
    if m:
        natural = f", natural recall {m['natural_recall']} on {m['n_natural']} texts" if "natural_recall" in m else ""
        lines.append(
            f"**activation probe**: threshold {m['threshold']} (set to hold 1% FPR on unseen control-corpus sources), "
            f"held-out control FPR {m.get('control_fpr_test')}{natural}"
        )
        if "f1" in m:
            lines.append(f"held-out templates: F1 {m['f1']}, AUROC {m['auroc']}, {m['n_pos']} pos / {m['n_neg']} neg")
    if not m:
        lines.append("*No probe for this concept in the loaded pack.*")
    evidence = engine.concept_evidence(concept)
    lines += [card_markdown(evidence.get("quality", {})), examples_markdown(evidence)]
    return "\n\n".join(line for line in lines if line)


def build(engine: Engine, trace: gr.State) -> tuple:
    with gr.Row():
        query = gr.Textbox(label="search a concept (id or lemma)", scale=3)
        selected = gr.Dropdown([], label="concept", allow_custom_value=True, scale=3)
        redraw = gr.Button("graph of the current trace", scale=1)
    plot = gr.Plot(label="concept hierarchy", elem_id="graph-plot")
    info = gr.Markdown("Run a prompt in *Monitor*, or search a concept.")

    def draw(records: list[dict], concept: str | None):
        scores = fired_scores(records or [])
        centres = sorted(scores, key=lambda c: -scores[c][0])[:MAX_FIRED]
        if concept and concept in engine.concepts:
            centres.append(concept)
        centres = [c for c in centres if c in engine.concepts]
        if not centres:
            return None, gr.Dropdown(), "Nothing fired yet: run a prompt in *Monitor*, or search a concept."
        graph = neighbourhood(engine.concepts, centres)
        concept = concept or centres[0]  # the strongest concept of the trace
        return (
            figure(engine.concepts, graph, scores, concept),
            gr.Dropdown(choices=sorted(graph), value=concept),
            details(engine, concept),
        )

    def search(text: str, records: list[dict]):
        hits = [c.id for c in engine.concepts.search(text or "")][:50]
        if not hits:
            raise gr.Error(f"No concept matches {text!r}.", print_exception=False)
        fig, _, info_md = draw(records, hits[0])
        return fig, gr.Dropdown(choices=hits, value=hits[0]), info_md

    query.submit(search, [query, trace], [plot, selected, info], api_name=False)
    selected.input(lambda r, c: (draw(r, c)[0], details(engine, c)), [trace, selected], [plot, info], api_name=False)
    redraw.click(draw, [trace, selected], [plot, selected, info], api_name=False)
    return (lambda records: draw(records, None)), [plot, selected, info], [trace]
