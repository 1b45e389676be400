"""A concept's evidence as Markdown: its quality card and corpus contexts with the firing token marked."""

from __future__ import annotations

import html

from hatcat.evidence.card import CRITERIA

LABELS = {
    "template_auroc": "held-out template AUROC",
    "control_fpr_dev": "control FPR (dev)",
    "control_fpr_test": "control FPR (test)",
    "corpus_firing_rate": "corpus firing rate",
    "natural_recall": "natural-text recall",
}
MARKS = {"good": "✅", "fair": "🟡", "poor": "❌"}


def card_markdown(card: dict) -> str:
    """One line per measurement with its level, and the grade (rule: hatcat/evidence/card.py)."""
    if not card:
        return ""
    parts = []
    for key, label in LABELS.items():
        value = card.get(key)
        shown = "not measured" if value is None else f"{value:.4g}"
        mark = MARKS.get(card["levels"].get(key, ""), "") if key in CRITERIA else ""
        parts.append(f"{label} {shown} {mark}".strip())
    return f"**quality grade {card['grade']}** · " + " · ".join(parts)


def context_html(context: dict) -> str:
    """`…left <mark>token</mark> right…` with the text escaped."""
    left, token, right = (html.escape(context[k]).replace("\n", " ⏎ ") for k in ("left", "token", "right"))
    return f"…{left}<mark><b>{token}</b></mark>{right}…"


def examples_markdown(evidence: dict) -> str:
    """Top and random corpus contexts, or how to build them."""
    if not evidence:
        return ""
    if evidence.get("examples") is None:
        return f"*{evidence.get('evidence_missing', 'no corpus dashboards')}*"
    ex = evidence["examples"]
    top = "\n".join(
        f"{i + 1}. {context_html(c)} <small>({c['logit']:+.1f}, {html.escape(c['doc'])})</small>"
        for i, c in enumerate(ex["top"])
    )
    rand = (
        "\n".join(f"- {context_html(c)} <small>({html.escape(c['doc'])})</small>" for c in ex["random"])
        or "*(it never fired on the corpus)*"
    )
    return (
        f"**fires on {evidence['firing_rate']:.3%} of reference-corpus tokens**\n\n"
        f"**Top contexts** (the corpus windows where it is highest):\n\n{top}\n\n"
        f"**Random firings** (a uniform sample of tokens past its threshold):\n\n{rand}"
    )
