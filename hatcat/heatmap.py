"""The one HTML look of a monitored answer: tokens coloured by divergence, hover titles, legend,
and (for embeds) the response summary and a top-concepts chart.

The workbench's heatmap and the OpenWebUI functions both draw with this module. It imports only
the standard library, because the OpenWebUI installer inlines its source into each function
(OpenWebUI loads a function as one self-contained source file).

A *record* is a token as `TokenRecord.to_dict()` has it (and the API sends it): `index`, `token`,
`color` and `divergence` ({`max_divergence`, `top_divergences`: dicts with `concept`, `activation`,
`text_similarity`, `divergence`}).
"""

import html
import json

TOP_SHOWN = 5  # concepts in a token's hover text

STYLE = """
<style>
.hc-trace {font-family: ui-monospace, monospace; line-height: 2.1; white-space: pre-wrap; color: #111;}
.hc-tok {padding: 2px 1px; border-radius: 3px; cursor: help;}
.hc-tok.hc-hit {outline: 2px solid #1a7f37; font-weight: 600;}
.hc-legend {font-size: 0.85em; color: #555;}
</style>
"""

EMBED_STYLE = """
<style>
body {margin: 0; font-family: system-ui, sans-serif; font-size: 14px; background: #fff;}
.hc-root {padding: 8px 10px; overflow: hidden;}
.hc-summary {margin: 0 0 6px; color: #222;}
.hc-scale {display: inline-block; width: 120px; height: 10px; vertical-align: middle; border: 1px solid #ccc;
  background: linear-gradient(to right, #0000ff, #ffffff, #ff0000);}
.hc-chart {margin-top: 8px; display: grid; grid-template-columns: max-content 1fr max-content; gap: 3px 8px;
  align-items: center; font-size: 0.85em;}
.hc-bar {height: 12px; border-radius: 2px; border: 1px solid #bbb;}
</style>
"""

# Tells OpenWebUI's embed iframe (sandboxed, no same-origin) how tall the document is: the height
# of its content (never the viewport's, which the message would make grow). The page may attach its
# listener after the document loaded (it re-renders messages), so the height is sent again for a
# few seconds, and whenever the content's size changes.
HEIGHT_SCRIPT = """
<script>
(function () {
  var root = document.querySelector('.hc-root');
  function post() {
    parent.postMessage({type: 'iframe:height', height: Math.ceil(root.getBoundingClientRect().height)}, '*');
  }
  var repeats = 0, timer = setInterval(function () { post(); if (++repeats >= 20) clearInterval(timer); }, 500);
  if (window.ResizeObserver) new ResizeObserver(post).observe(root);
  window.addEventListener('load', post);
  post();
})();
</script>
"""


def divergence_colour(value: float, full_at: float = 1.0) -> str:
    """White at 0, red towards +full_at (represented but unsaid), blue towards -full_at (said, not represented)."""
    v = max(-1.0, min(1.0, value / full_at))
    fade = int(255 * (1 - abs(v)))
    return f"#ff{fade:02x}{fade:02x}" if v >= 0 else f"#{fade:02x}{fade:02x}ff"


def hover_text(record: dict) -> str:
    divergence = record["divergence"]
    rows = [
        f"{c['concept']}: act {c['activation']:.2f}, text {c['text_similarity']:.2f}, div {c['divergence']:+.2f}"
        for c in divergence["top_divergences"][:TOP_SHOWN]
    ]
    return f"#{record['index']} {record['token']!r} max divergence {divergence['max_divergence']:+.2f}\n" + (
        "\n".join(rows) or "no concept reported"
    )


def token_span(record: dict, colour: str, hit: bool = False) -> str:
    return (
        f'<span class="hc-tok{" hc-hit" if hit else ""}" data-index="{record["index"]}" '
        f'style="background:{colour}" title="{html.escape(hover_text(record))}">{html.escape(record["token"])}</span>'
    )


DIVERGENCE_LEGEND = (
    "colour: divergence (red = represented but not said, blue = said but not represented); measured on the "
    "model's own wrong answers, lies and withheld facts it is at or below chance (README, Behaviour benchmark)"
)


def trace_html(spans: list[str], legend: str) -> str:
    """Token spans in the heatmap's frame, with a legend line under them."""
    return (
        STYLE
        + f'<div class="hc-trace">{"".join(spans)}</div>'
        + f'<div class="hc-legend">{legend}; hover a token for its top concepts</div>'
    )


def concept_chart(top_concepts: list[dict], shown: int, full_at: float = 1.0) -> str:
    """Top concepts of a response as bars: length = the response-level rank score (hatcat/ranking.py),
    colour = mean divergence over the tokens it fired on."""
    rows = top_concepts[:shown]
    if not rows:
        return '<div class="hc-chart-empty">no concept diverged</div>'
    top = max(abs(c["score"]) for c in rows) or 1.0
    cells = []
    for c in rows:
        width = max(2, round(100 * abs(c["score"]) / top))
        colour = divergence_colour(c["mean_divergence"], full_at)
        cells.append(
            f'<span class="hc-concept">{html.escape(c["concept"])}</span>'
            f'<span><div class="hc-bar" style="width:{width}%;background:{colour}"></div></span>'
            f'<span class="hc-num">{c["tokens"]}&times;{c["mean_divergence"]:+.2f}</span>'
        )
    return f'<div class="hc-chart">{"".join(cells)}</div>'


def embed_document(records: list[dict], summary: dict | None, shown: int = 8, full_at: float = 1.0) -> str:
    """A whole HTML page for an OpenWebUI embed: summary line, coloured tokens, legend, top-concepts chart.

    `summary` is `ResponseSummary.to_dict()` (tokens, mean/max divergence, top_concepts) or None."""
    spans = [token_span(r, divergence_colour(r["divergence"]["max_divergence"], full_at)) for r in records]
    legend = f'<span class="hc-scale"></span> divergence &minus;{full_at:g} &hellip; +{full_at:g}; {DIVERGENCE_LEGEND}'
    if summary is not None:
        head = (
            f'<p class="hc-summary"><b>HatCat</b> &middot; {summary["tokens"]} tokens &middot; '
            f"mean divergence {summary['mean_divergence']:+.3f} &middot; max {summary['max_divergence']:+.3f}</p>"
        )
        chart = concept_chart(summary["top_concepts"], shown, full_at)
    else:
        head, chart = '<p class="hc-summary"><b>HatCat</b> &middot; no summary</p>', ""
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        + STYLE
        + EMBED_STYLE
        + '</head><body><div class="hc-root">'
        + head
        + trace_html(spans, legend)
        + chart
        + "</div>"
        + HEIGHT_SCRIPT
        + "</body></html>"
    )


def status_line(records: list[dict]) -> str:
    """The short line OpenWebUI shows above a message: the highest divergence so far and its concept."""
    peak = max(records, key=lambda r: r["divergence"]["max_divergence"])["divergence"]
    concepts = peak["top_divergences"]  # highest divergence first
    return f"max divergence {peak['max_divergence']:.2f}" + (f" · {concepts[0]['concept']}" if concepts else "")


def status_event(records: list[dict], done: bool) -> dict:
    return {"type": "status", "data": {"description": status_line(records), "done": done}}


def embeds_event(document: str) -> dict:
    """OpenWebUI's event that puts one HTML document (in a sandboxed iframe) above a message.

    `replace`: the message keeps this embed only, however often it is sent (the page shows the
    latest list anyway; without it OpenWebUI's database would append)."""
    return {"type": "embeds", "data": {"embeds": [document], "replace": True}}


def event_line(event: dict) -> str:
    """An SSE line carrying an OpenWebUI event and no choices (what OpenWebUI forwards to its emitter)."""
    return f"data: {json.dumps({'choices': [], 'event': event})}\n\n"
