"""Divergence events: the concepts that crossed their threshold in one monitored response.

One event per (response, concept): the span from the first to the last token on which the
concept's activation reached the monitor's threshold, its highest activation (`score`) and
divergence there, and the text of the span with a few tokens either side.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from hatcat.monitor import TokenRecord
from hatcat.store import Store, StoreWriteError

log = logging.getLogger("hatcat.store")
CONTEXT_TOKENS = 6
MAX_EXCERPT = 400


def crossings(records: Sequence[TokenRecord | dict], thresholds: dict[str, float]) -> list[dict[str, Any]]:
    """Per concept that reached its threshold: span, score, divergence, excerpt (records: objects, or
    `to_dict(top=None)`s with every reported concept)."""
    rows = [r.to_dict(top=None) if isinstance(r, TokenRecord) else r for r in records]
    spans: dict[str, dict[str, Any]] = {}
    for row in rows:
        for c in row["divergence"]["top_divergences"]:
            threshold = thresholds.get(c["concept"])
            if threshold is None or c["activation"] < threshold:
                continue
            span = spans.setdefault(
                c["concept"],
                {
                    "start": row["index"],
                    "score": c["activation"],
                    "divergence": c["divergence"],
                    "threshold": threshold,
                },
            )
            span["end"] = row["index"]
            span["score"] = max(span["score"], c["activation"])
            span["divergence"] = max(span["divergence"], c["divergence"])
    tokens = {row["index"]: row["token"] for row in rows}
    events = []
    for concept, span in spans.items():
        text = "".join(
            tokens.get(i, "") for i in range(span["start"] - CONTEXT_TOKENS, span["end"] + CONTEXT_TOKENS + 1)
        )
        events.append(
            {
                "concept": concept,
                "score": round(float(span["score"]), 4),
                "threshold": round(float(span["threshold"]), 4),
                "divergence": round(float(span["divergence"]), 4),
                "token_start": span["start"],
                "token_end": span["end"],
                "excerpt": text.strip()[:MAX_EXCERPT],
            }
        )
    return events


def record_events(
    store: Store, records: Sequence[TokenRecord | dict], thresholds: dict[str, float], context: dict
) -> int:
    """Store a response's events (each with `context`: request, actor, model, pack); a store that
    refuses is logged, never raised (the answer is served). Returns how many were stored."""
    found = crossings(records, thresholds)
    try:
        store.add_events([{**context, **event} for event in found])
    except StoreWriteError as err:
        log.warning("%s (request %s)", err, context.get("request_id"))
        return 0
    return len(found)
