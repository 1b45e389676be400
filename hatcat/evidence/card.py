"""A quality card for every concept, from the pack's metrics.json and its corpus dashboard.

Criteria (each `good`, `fair` or `poor`; a criterion without a measurement is left out):
- `template_auroc` (held-out template texts, where metrics.json has them): >= 0.95 good, >= 0.80 fair;
- `control_fpr_test` (control corpus, test part, at the pack threshold): <= 0.005 good, <= 0.02 fair;
- `corpus_firing_rate` (the reference corpus, at the pack threshold: text that is mostly not about the
  concept, so a high rate means the probe fires on ordinary text): <= 0.002 good, <= 0.02 fair;
- `natural_recall` (natural scenes, where measured): >= 0.5 good, >= 0.2 fair.
Grade: A when every measured criterion is good and at least three are measured; otherwise B with no
poor criterion, C with one, D with two or more.
"""

from __future__ import annotations

from typing import Any

CRITERIA = {  # name: (good, fair, higher is better)
    "template_auroc": (0.95, 0.80, True),
    "control_fpr_test": (0.005, 0.02, False),
    "corpus_firing_rate": (0.002, 0.02, False),
    "natural_recall": (0.5, 0.2, True),
}
GRADES = "ABCD"


def level(name: str, value: float) -> str:
    good, fair, higher = CRITERIA[name]
    if (value >= good) if higher else (value <= good):
        return "good"
    return "fair" if ((value >= fair) if higher else (value <= fair)) else "poor"


def grade(levels: dict[str, str]) -> str:
    poor = sum(v == "poor" for v in levels.values())
    if not poor and len(levels) >= 3 and all(v == "good" for v in levels.values()):
        return "A"
    return GRADES[min(1 + poor, 3)]


def card(metrics: dict[str, Any], dashboard: dict[str, Any] | None) -> dict[str, Any]:
    """The card of one concept: its measurements, each criterion's level and the grade."""
    values = {
        "template_auroc": metrics.get("auroc"),
        "control_fpr_dev": metrics.get("control_fpr_dev"),
        "control_fpr_test": metrics.get("control_fpr_test"),
        "corpus_firing_rate": dashboard.get("firing_rate") if dashboard else None,
        "natural_recall": metrics.get("natural_recall"),
    }
    levels = {k: level(k, v) for k, v in values.items() if k in CRITERIA and v is not None}
    return {**values, "levels": levels, "grade": grade(levels)}
