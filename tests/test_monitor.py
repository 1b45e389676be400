"""The monitor on the real model: records per token, hierarchy policy, divergence, summaries."""

from __future__ import annotations

import pytest
import torch

from hatcat.analysis import analyses
from hatcat.engine import Engine
from hatcat.generation import GenerationSettings
from hatcat.heatmap import divergence_colour
from hatcat.pipeline import analyze_text, text_states
from hatcat.ranking import own_evidence
from tests.tiny import ending, solo, token_records

TEXT = "The orchestra tuned up, and then the violins began a slow, sad melody."


@pytest.fixture()
def monitor(probed_engine: Engine):
    monitor = probed_engine.monitor
    saved = monitor.thresholds.clone()
    yield monitor
    monitor.thresholds.copy_(saved)


def test_analysis_gives_one_record_per_token_with_the_capped_residual_as_divergence(
    probed_engine: Engine, monitor
) -> None:
    records = analyze_text(probed_engine.model, probed_engine.tokenizer, monitor, TEXT)
    assert "".join(r.token for r in records) == TEXT
    assert all(r.concepts for r in records)
    bank = monitor.bank
    hidden, windows, _ = text_states(probed_engine.model, probed_engine.tokenizer, monitor, TEXT)
    with torch.inference_mode():
        act = hidden.float() @ bank.act_weight.T + bank.act_bias  # logits [T, N]
        words = windows.float() @ bank.text_weight.T + bank.text_bias
        expected = torch.tanh((torch.minimum(act, bank.act_cap) - words) / bank.divergence_scale)
    for t, record in enumerate(records):
        for c in record.concepts:
            assert c.divergence == pytest.approx(float(expected[t, bank.index[c.concept]]), abs=1e-3)
        fired = [c.divergence for c in record.concepts if c.activation >= monitor.thresholds[bank.index[c.concept]]]
        assert record.max_divergence == pytest.approx(max(fired, key=abs) if fired else 0.0, abs=1e-4)
        activations = [c.activation for c in record.concepts]
        assert activations == sorted(activations, reverse=True)


def test_music_scene_makes_the_music_probe_fire_by_the_end(probed_engine: Engine, monitor) -> None:
    record = analyze_text(probed_engine.model, probed_engine.tokenizer, monitor, TEXT)[-1]
    music = next(c for c in record.concepts if c.concept == "Music")
    assert music.activation >= monitor.thresholds[monitor.bank.index["Music"]]


def test_child_is_reported_only_when_its_parent_fires(probed_engine: Engine, monitor) -> None:
    # Anger (layer 4) hangs under EmotionalState (layer 3); neither is a base layer.
    monitor.set_thresholds({"EmotionalState": 1.01, "Anger": 0.0})  # parent can never fire
    reported = {
        c.concept for r in analyze_text(probed_engine.model, probed_engine.tokenizer, monitor, TEXT) for c in r.concepts
    }
    assert "Anger" not in reported
    monitor.set_thresholds({"EmotionalState": 0.0, "Anger": 1.01})  # parent always fires, child never
    reported = {
        c.concept for r in analyze_text(probed_engine.model, probed_engine.tokenizer, monitor, TEXT) for c in r.concepts
    }
    assert "Anger" in reported and "EmotionalState" in reported


def test_parent_is_dropped_when_its_child_fires(probed_engine: Engine, monitor) -> None:
    monitor.set_thresholds({"EmotionalState": 0.0, "Anger": 0.0})  # both fire on every token
    records = analyze_text(probed_engine.model, probed_engine.tokenizer, monitor, TEXT)
    for record in records:
        names = {c.concept for c in record.concepts}
        assert "Anger" in names and "EmotionalState" not in names


def test_keep_top_k_caps_the_report(probed_engine: Engine, monitor) -> None:
    monitor.keep_top_k = 2
    try:
        records = analyze_text(probed_engine.model, probed_engine.tokenizer, monitor, TEXT)
    finally:
        monitor.keep_top_k = probed_engine.settings.keep_top_k
    assert max(len(r.concepts) for r in records) == 2


def test_a_monitored_generation_streams_records_then_a_summary(probed_engine: Engine) -> None:
    events = solo(probed_engine, "My favourite kind of music is", GenerationSettings(max_tokens=8, temperature=0))
    records, finished, summary = token_records(events), ending(events), events[-1].summary
    assert [r.token for r in records] == [e.step.text for e in events[:-1]] and finished.completion_tokens == 8
    assert [r.index for r in records] == list(range(len(records)))
    assert summary.tokens == len(records)
    assert summary.max_divergence == max(r.max_divergence for r in records)
    assert summary.line().startswith("Analysis: mean divergence")
    scores = [c.score for c in summary.top_concepts]  # the response-level ranking, behaviour rows left out
    assert scores and scores == sorted(scores, reverse=True)
    assert "Deception" not in {c.concept for c in summary.top_concepts}


def test_the_summary_ranks_concepts_by_the_response_level_score(probed_engine: Engine, monitor) -> None:
    bank = monitor.bank
    hidden, window, _tokens = text_states(probed_engine.model, probed_engine.tokenizer, monitor, TEXT)
    act, text, _div = bank.scores(hidden, window)
    expected = own_evidence(bank.rank_score(act, text).topk(2, dim=0).values.mean(0), monitor.parent_edges)
    summary = next(analyses(probed_engine.model, probed_engine.tokenizer, monitor, [TEXT]))[1]["summary"]
    top = summary["top_concepts"]
    assert [c["score"] for c in top] == sorted((c["score"] for c in top), reverse=True)
    assert len(top) == min(10, int(bank.rankable.sum()))
    assert top[0]["concept"] == bank.concepts[int(expected.argmax())]
    assert top[0]["score"] == pytest.approx(float(expected.max()), abs=1e-3)


def test_colour_scale_runs_from_blue_through_white_to_red() -> None:
    assert divergence_colour(0.0) == "#ffffff"
    assert divergence_colour(1.0) == "#ff0000"
    assert divergence_colour(-1.0) == "#0000ff"
