"""Steering on the real model: it moves the concept's score in the generated text (the Scheduler's
per-row adder; the tiny-model tier checks its mechanics: rows apart, hooks gone, an unknown concept)."""

from __future__ import annotations

import pytest

from hatcat.engine import Engine
from hatcat.generation import GenerationSettings
from hatcat.steering import Steering
from hatcat.tap import hidden_at
from tests.tiny import ending, solo

PROMPT = "Yesterday afternoon I went outside and"


def steered_text(engine: Engine, steerings: tuple[Steering, ...]) -> str:
    return ending(solo(engine, PROMPT, GenerationSettings(max_tokens=24, temperature=0), steerings)).text


def mean_activation(engine: Engine, text: str, concept: str) -> float:
    """The concept's probability read from the text afterwards, with no steering attached."""
    index = engine.bank.index[concept]
    ids = engine.tokenizer(PROMPT + text, return_tensors="pt").input_ids
    hidden = hidden_at(engine.model, {"input_ids": ids}, [engine.bank.tap_layer])[engine.bank.tap_layer][
        0, -len(engine.tokenizer(text).input_ids) :
    ]
    return float(engine.bank.score(hidden)[:, index].mean())


def test_steering_towards_a_concept_raises_its_score_in_the_generated_text(probed_engine: Engine) -> None:
    plain = steered_text(probed_engine, ())
    towards = steered_text(probed_engine, (Steering("Music", 0.6),))
    away = steered_text(probed_engine, (Steering("Music", -0.6),))
    assert towards != plain
    base = mean_activation(probed_engine, plain, "Music")
    assert mean_activation(probed_engine, towards, "Music") > base + 0.05
    assert mean_activation(probed_engine, away, "Music") < base


def test_strength_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="strength"):
        Steering("Music", 9.0)
