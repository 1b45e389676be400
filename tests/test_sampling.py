"""Numerically safe sampling: every accepted temperature, top_p, top_k and repetition_penalty
gives a token, never NaN probabilities (the fuzz found temperature 1e-40 and repetition_penalty
2e-313 crashing the sampler)."""

from __future__ import annotations

import itertools

import pytest
import torch

from hatcat.errors import InvalidValue
from hatcat.generation import GenerationSettings
from hatcat.sampling import Sampler, draw_rows

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
        sampler = Sampler(settings, prompt[None])
        tokens = [sampler.sample(logits.clone()) for _ in range(3)]
        assert all(0 <= t < logits.numel() for t in tokens)


def test_vanishing_temperature_picks_the_argmax() -> None:
    logits = _logits()
    sampler = Sampler(GenerationSettings(temperature=1e-40, seed=3), torch.tensor([[1]]))
    assert {sampler.sample(logits) for _ in range(20)} == {7}


def test_a_seed_repeats_its_draws() -> None:
    logits = _logits()
    settings = GenerationSettings(temperature=1.5, seed=11)
    first, second = (Sampler(settings, torch.tensor([[1]])) for _ in range(2))
    assert [first.sample(logits) for _ in range(20)] == [second.sample(logits) for _ in range(20)]


@pytest.mark.parametrize("at", [(0, 1, 2, 3), (3, 511, 512, 4095)], ids=["one-block", "across-blocks"])
def test_draws_follow_the_softmax_of_the_scaled_logits(at: tuple[int, ...]) -> None:
    logits = torch.full((4096,), float("-inf"))  # probability 0 everywhere else: never drawn
    logits[list(at)] = torch.tensor([2.0, 1.0, 0.0, -1.0])
    sampler = Sampler(GenerationSettings(temperature=0.5, seed=4), torch.tensor([[1]]))
    # 20,000 draws from the one seeded generator, 2,000 rows a call (as 20,000 calls would draw them, in order)
    draws = torch.cat([draw_rows([sampler] * 2_000, logits.expand(2_000, -1)) for _ in range(10)])
    counts = torch.bincount(draws, minlength=4096)
    assert int(counts.sum() - counts[list(at)].sum()) == 0
    expected = torch.softmax(logits[list(at)] / 0.5, dim=0) * 20_000
    chi2 = float(((counts[list(at)] - expected) ** 2 / expected).sum())
    assert chi2 < 16.3  # 3 degrees of freedom, p = 0.001


def test_a_row_draws_the_same_tokens_alone_and_in_a_batch_of_other_settings() -> None:
    settings = [
        GenerationSettings(temperature=0),
        GenerationSettings(temperature=0.7, seed=1),
        GenerationSettings(temperature=1.5, seed=2),
        GenerationSettings(temperature=0.9, top_k=20, seed=3),
        GenerationSettings(temperature=0.9, top_p=0.8, seed=4),
        GenerationSettings(temperature=0.6, repetition_penalty=1.3, seed=5),
    ]
    steps = torch.randn(10, len(settings), 4096, generator=torch.Generator().manual_seed(1)) * 4
    prompt = torch.tensor([[3, 5]])
    together = [Sampler(s, prompt) for s in settings]
    batched = torch.stack([draw_rows(together, logits) for logits in steps], dim=1)
    for row, s in enumerate(settings):
        alone = Sampler(s, prompt)
        assert [alone.sample(logits[row]) for logits in steps] == batched[row].tolist()


def test_min_tokens_holds_end_of_sequence_back() -> None:
    logits = _logits()  # token 7 is the clear favourite: call it end-of-sequence
    for temperature in (0, 0.7):
        sampler = Sampler(GenerationSettings(temperature=temperature, min_tokens=3, seed=1), torch.tensor([[1]]), {7})
        tokens = [sampler.sample(logits) for _ in range(4)]
        assert 7 not in tokens[:3] and tokens[3] == 7


def test_min_tokens_above_max_tokens_is_refused() -> None:
    with pytest.raises(InvalidValue, match="min_tokens"):
        GenerationSettings(max_tokens=2, min_tokens=3)
