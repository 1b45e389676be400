"""Steering on the real model: it moves the concept's score in the generated text, and cleans up."""

from __future__ import annotations

import pytest

from hatcat.engine import Engine
from hatcat.generation import GenerationSettings, collect, generate
from hatcat.model import decoder_layers
from hatcat.steering import Steering, UnknownConcept, steered
from hatcat.tap import hidden_at

PROMPT = "Yesterday afternoon I went outside and"


def steered_text(engine: Engine, steerings: list[Steering]) -> str:
    with steered(engine.model, engine.vectors, steerings):
        text, _, _ = collect(
            generate(
                engine.model,
                engine.tokenizer,
                PROMPT,
                GenerationSettings(max_tokens=24, temperature=0),
                engine.bank.tap_layer,
            )
        )
    return text


def mean_activation(engine: Engine, text: str, concept: str) -> float:
    """The concept's probability read from the text afterwards, with no steering attached."""
    index = engine.bank.index[concept]
    ids = engine.tokenizer(PROMPT + text, return_tensors="pt").input_ids
    hidden = hidden_at(engine.model, {"input_ids": ids}, [engine.bank.tap_layer])[engine.bank.tap_layer][
        0, -len(engine.tokenizer(text).input_ids) :
    ]
    return float(engine.bank.score(hidden)[:, index].mean())


def test_steering_towards_a_concept_raises_its_score_in_the_generated_text(probed_engine: Engine) -> None:
    plain = steered_text(probed_engine, [])
    towards = steered_text(probed_engine, [Steering("Music", 0.6)])
    away = steered_text(probed_engine, [Steering("Music", -0.6)])
    assert towards != plain
    base = mean_activation(probed_engine, plain, "Music")
    assert mean_activation(probed_engine, towards, "Music") > base + 0.05
    assert mean_activation(probed_engine, away, "Music") < base


def test_steering_hooks_are_removed_even_when_generation_fails(probed_engine: Engine) -> None:
    layer = decoder_layers(probed_engine.model)[probed_engine.bank.tap_layer]
    before = len(layer._forward_hooks)  # transformers may keep its own hook once hidden states were requested
    with (
        pytest.raises(RuntimeError, match="boom"),
        steered(probed_engine.model, probed_engine.vectors, [Steering("Music", 0.5)]),
    ):
        assert len(layer._forward_hooks) == before + 1
        raise RuntimeError("boom")
    assert len(layer._forward_hooks) == before


def test_steering_an_unknown_concept_is_refused(probed_engine: Engine) -> None:
    with pytest.raises(UnknownConcept, match="NoSuchConcept"):
        steered_text(probed_engine, [Steering("NoSuchConcept", 0.5)])


def test_strength_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="strength"):
        Steering("Music", 9.0)
