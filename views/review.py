"""Review queue: divergence events from the record store, filtered, marked, exported (admin).

An event is a response in which a concept crossed its threshold (`hatcat.store.events`). Marks
(reviewed / true positive / false positive) feed the Thresholds panel, which shows how a
concept's reviewed events fall under a candidate threshold.
"""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

import gradio as gr
import pandas as pd

from hatcat.access import Role
from hatcat.engine import Engine
from hatcat.store import REVIEWS, StoreWriteError
from views.access import current_actor, guard
from views.common import user_error

COLUMNS = ["id", "at", "actor", "concept", "score", "threshold", "divergence", "excerpt", "review", "request_id"]
ANY = "any"


def reviewed_under(events: list[dict], threshold: float) -> dict[str, int]:
    """How reviewed events would fall at `threshold`: true/false positives kept (score >= it) or dropped."""
    out = {"tp_kept": 0, "tp_dropped": 0, "fp_kept": 0, "fp_dropped": 0}
    for event in events:
        kind = {"true_positive": "tp", "false_positive": "fp"}.get(event.get("review") or "")
        if kind:
            out[f"{kind}_{'kept' if event['score'] >= threshold else 'dropped'}"] += 1
    return out


def reviewed_line(engine: Engine, concept: str, threshold: float) -> str:
    """One line for the Thresholds panel (empty without a store or reviewed events)."""
    if engine.records is None or not concept:
        return ""
    events = [
        e for review in ("true_positive", "false_positive") for e in engine.records.events(concept, review=review)
    ]
    if not events:
        return ""
    n = reviewed_under(events, threshold)
    lowest = min(e["threshold"] for e in events)
    return (
        f"Reviewed events of **{concept}** at {threshold:.2f}: true positives kept {n['tp_kept']}, "
        f"dropped {n['tp_dropped']}; false positives kept {n['fp_kept']}, removed {n['fp_dropped']} "
        f"(events were recorded at thresholds >= {lowest:.2f})."
    )


def _since(text: str) -> datetime | None:
    if not (text or "").strip():
        return None
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise gr.Error(f"'since' is an ISO date or time, e.g. 2026-11-26 or 2026-11-26T14:00, not {text!r}") from None


def build(engine: Engine) -> None:
    gr.Markdown(
        "Responses in which a concept crossed its threshold, newest first. Mark them to tune thresholds "
        "against (the *Thresholds* tab shows how reviewed events fall under a candidate threshold)."
    )
    with gr.Row():
        concept = gr.Textbox(label="concept", scale=2)
        user = gr.Textbox(label="user", scale=1)
        since = gr.Textbox(label="since (ISO date/time)", scale=1)
        min_score = gr.Slider(0, 1, value=0, step=0.01, label="min score", scale=2)
        status = gr.Dropdown([ANY, "none", *REVIEWS], value=ANY, label="review", scale=1)
        show = gr.Button("list", scale=1)
    table = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="review-table", wrap=True)
    with gr.Row():
        ids = gr.Textbox(label="event ids (comma-separated; empty: all listed)", scale=3)
        mark_as = gr.Radio(list(REVIEWS), value="true_positive", label="mark as", scale=2)
        mark = gr.Button("mark", scale=1)
    with gr.Row():
        export_csv = gr.Button("export CSV")
        export_parquet = gr.Button("export Parquet")
        exported = gr.File(label="export", height=90)
    note = gr.Markdown()

    def listed(c: str, u: str, s: str, m: float, r: str) -> pd.DataFrame:
        if engine.records is None:
            raise gr.Error("This workbench runs without a record store.", print_exception=False)
        rows = engine.records.events(
            c.strip() or None, u.strip() or None, _since(s), None, m or None, None if r == ANY else r, 10_000
        )
        return pd.DataFrame(rows, columns=COLUMNS)

    @guard(engine, Role.admin, "reading divergence events")
    def list_events(c: str, u: str, s: str, m: float, r: str):
        return listed(c, u, s, m, r)

    @guard(engine, Role.admin, "reviewing events")
    def mark_events(text: str, review: str, c: str, u: str, s: str, m: float, r: str):
        try:
            chosen = [int(part) for part in (text or "").replace(" ", "").split(",") if part]
        except ValueError:
            raise gr.Error("Event ids are whole numbers separated by commas.", print_exception=False) from None
        chosen = chosen or listed(c, u, s, m, r)["id"].astype(int).tolist()
        if not chosen:
            raise gr.Error("No events to mark.", print_exception=False)
        try:
            found = engine.records.mark(chosen, review, current_actor())
        except StoreWriteError as err:
            raise user_error(err) from None
        return listed(c, u, s, m, r), f"Marked {found} event(s) as {review}."

    def exporter(kind: str):
        @guard(engine, Role.admin, "exporting divergence events")
        def export(c: str, u: str, s: str, m: float, r: str) -> str:
            frame = listed(c, u, s, m, r)
            path = Path(tempfile.mkdtemp(prefix="hatcat-events-")) / f"events.{kind}"
            frame.to_csv(path, index=False) if kind == "csv" else frame.to_parquet(path, index=False)
            return str(path)

        return export

    filters = [concept, user, since, min_score, status]
    show.click(list_events, filters, table, api_name="events")
    mark.click(mark_events, [ids, mark_as, *filters], [table, note], api_name="review")
    export_csv.click(exporter("csv"), filters, exported, api_name="export_csv")
    export_parquet.click(exporter("parquet"), filters, exported, api_name="export_parquet")
