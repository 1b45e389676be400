"""Numerically safe sampling: every accepted temperature, top_p, top_k and repetition_penalty
gives a token, never NaN probabilities (the fuzz found temperature 1e-40 and repetition_penalty
2e-313 crashing the sampler)."""

from __future__ import annotations

import itertools

import pytest
import torch

from hatcat.generation import GenerationSettings, _Sampler

TEMPERATURES = (5e-324, 1e-300, 1e-40, 1e-8, 0.7, 2.0)
PENALTIES = (5e-324, 2e-313, 1e-3, 1.0, 10.0)
TOP_P = (5e-324, 1e-9, 0.5, 1.0)
TOP_K = (0, 1, 50)


def _logits(vocab: int = 4096) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(vocab, generator=generator) * 8
    logits[7] = 40.0  # one clear favourite
    return logits


@pytest.mark.parametrize(("temperature", "penalty"), list(itertools.product(TEMPERATURES, PENALTIES)))
def test_extreme_temperature_and_penalty_give_a_token(temperature: float, penalty: float) -> None:
    logits = _logits()
    prompt = torch.tensor([7, 11, 13])  # the favourite was "seen": the penalty pushes it around
    for top_p, top_k in itertools.product(TOP_P, TOP_K):
        settings = GenerationSettings(
            temperature=temperature, repetition_penalty=penalty, top_p=top_p, top_k=top_k, seed=1
        )
        sampler = _Sampler(settings, prompt[None])
        tokens = [sampler.sample(logits.clone()) for _ in range(3)]
        assert all(0 <= t < logits.numel() for t in tokens)


def test_vanishing_temperature_picks_the_argmax() -> None:
    logits = _logits()
    sampler = _Sampler(GenerationSettings(temperature=1e-40, seed=3), torch.tensor([[1]]))
    assert {sampler.sample(logits) for _ in range(20)} == {7}


def test_a_seed_repeats_its_draws() -> None:
    logits = _logits()
    settings = GenerationSettings(temperature=1.5, seed=11)
    first, second = (_Sampler(settings, torch.tensor([[1]])) for _ in range(2))
    assert [first.sample(logits) for _ in range(20)] == [second.sample(logits) for _ in range(20)]
