"""The workbench's panels: trace rendering and exports, threshold scores, custom-concept training,
and the monitor endpoint through `gradio_client` against the running app."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from gradio_client import Client

from hatcat.engine import Engine
from hatcat.training.fit import at_threshold, auroc
from hatcat.training.run import TrainSettings, train
from views import trace as tr
from views.training import custom_pack


def _trace(engine: Engine) -> list[dict]:
    from hatcat.pipeline import analyze_text

    with engine.exclusive():
        return [
            r.to_dict(top=None)
            for r in analyze_text(
                engine.model, engine.tokenizer, engine.monitor, "She was <afraid> of the loud music & the car."
            )
        ]


def test_heatmap_escapes_tokens_colours_each_and_outlines_hits(probed_engine: Engine) -> None:
    records = _trace(probed_engine)
    page = tr.heatmap_html(records)
    assert page.count('class="hc-tok') == len(records)
    assert "&lt;" in page and "<afraid>" not in page
    assert all(f"background:{r['color']}" in page for r in records)
    concept = records[0]["divergence"]["top_divergences"][0]["concept"]
    assert 'class="hc-tok hc-hit"' in tr.heatmap_html(records, concept, threshold=0.0)
    assert 'class="hc-tok hc-hit"' not in tr.heatmap_html(records, concept, threshold=1.01)


def test_exports_hold_every_record_and_concept(probed_engine: Engine) -> None:
    records = _trace(probed_engine)
    jsonl, table = tr.export_files(records, {"line": "x"})
    lines = [json.loads(line) for line in Path(jsonl).read_text().splitlines()]
    assert lines[:-1] == records and lines[-1] == {"summary": {"line": "x"}}
    with Path(table).open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(max(1, len(r["divergence"]["top_divergences"])) for r in records)
    assert {row["token"] for row in rows} == {r["token"] for r in records}


def test_held_out_scores_separate_the_classes(probed_engine: Engine) -> None:
    scores, labels = probed_engine.held_out_scores("Music", "val")
    assert len(scores) == len(labels) and 0 < sum(labels) < len(labels)
    assert auroc(__import__("numpy").array(scores), __import__("numpy").array(labels)) > 0.7
    assert at_threshold(scores, labels, 0.0)["recall"] == 1.0


def test_custom_concept_trains_and_hot_loads_with_its_merged_concept_pack(
    probed_engine: Engine, tmp_path: Path
) -> None:
    base = probed_engine.concepts
    pack = custom_pack(
        probed_engine,
        base,
        "CheerfulGreeting",
        ["EmotionalState"],
        "A warm, happy hello.",
        "Hello, so lovely to see you!\nGood morning, friend, what a joy!\nHi there, great to have you here!",
        "The invoice is overdue.",
    )
    own = Engine(probed_engine.settings, probed_engine.loaded, base)  # a pack swap no other test sees
    with own.exclusive():
        folder, _ = train(
            own.loaded,
            pack,
            TrainSettings(concepts=("CheerfulGreeting", "Music"), k_texts=2, control_per_split=200),
            own.settings.cache_dir,
            tmp_path / "p",
        )
    own.load_probes(folder, concepts=pack)
    assert "CheerfulGreeting" in own.bank.index and "CheerfulGreeting" in own.concepts
    assert "CheerfulGreeting" not in probed_engine.concepts


def test_monitor_endpoint_streams_tokens_with_records(server: str) -> None:
    client = Client(f"{server}/", verbose=False)
    outputs = client.predict("Tell me about fear.", 8, 0, 0, "divergence", api_name="/monitor")
    trace = next(o for o in outputs if isinstance(o, dict) and "records" in o)
    records = trace["records"]
    assert 1 <= len(records) <= 8
    assert all(set(r) == {"index", "token", "color", "divergence"} for r in records)
    assert any(r["divergence"]["top_divergences"] for r in records)
    assert trace["summary"]["tokens"] == len(records)
    html = next(o for o in outputs if isinstance(o, str) and "hc-tok" in o)
    assert html.count('class="hc-tok') == len(records)


def test_analysis_shows_each_behaviour_with_its_threshold_and_what_was_measured() -> None:
    summary = {"line": "Analysis: …", "finish_reason": "stop", "top_concepts": []}
    assert "Behaviours" not in tr.analysis_markdown(summary, [])
    summary["behaviours"] = {"falsehood": {"score": 6.1, "threshold": 5.4445, "fired": True}}
    shown = tr.analysis_markdown(summary, [])
    assert "falsehood +6.10 (threshold +5.44, fired)" in shown
    assert tr.BEHAVIOURS_CAVEAT in shown
