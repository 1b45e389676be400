"""The divergence search's pieces: the words windows it reads and its per-concept residual fits."""

from __future__ import annotations

import torch

from experiments.divergence_search import WORDS, Fits
from experiments.divergence_states import _window
from hatcat.monitor import TEXT_WINDOW, window_means


def test_a_window_is_the_mean_of_the_tokens_before_its_end() -> None:
    embedded = torch.randn(20, 4)
    end = torch.tensor([0, 1, 5, 20])
    got = _window(embedded, end, TEXT_WINDOW)
    assert torch.equal(got[0], torch.zeros(4))  # nothing read yet: the words say nothing
    for row, e in enumerate(end.tolist()[1:], start=1):
        assert torch.allclose(got[row], embedded[max(0, e - TEXT_WINDOW) : e].mean(0), atol=1e-5)
    # ending after each token, it is the monitor's own window over a whole text
    every = torch.arange(1, 21)
    assert torch.allclose(_window(embedded, every, TEXT_WINDOW), window_means(embedded), atol=1e-5)


def test_a_residual_is_what_the_words_do_not_predict_in_standard_deviations() -> None:
    torch.manual_seed(0)
    words = torch.randn(5000, 3)
    slope, offset = torch.tensor([2.0, -1.0, 0.0]), torch.tensor([1.0, 0.5, -3.0])
    noise = torch.randn(5000, 3) * torch.tensor([0.5, 2.0, 1.0])
    reference = {side: words for side in WORDS} | {"act15": offset + slope * words + noise}
    fits = Fits(reference)
    alpha, beta, sigma = fits.coef["w8"]
    assert torch.allclose(beta, slope, atol=0.05) and torch.allclose(alpha, offset, atol=0.05)
    assert torch.allclose(sigma, torch.tensor([0.5, 2.0, 1.0]), rtol=0.05)
    residual = fits.residual("w8", offset + slope * words + noise, words)
    assert torch.allclose(residual.std(0), torch.ones(3), atol=0.05)
    # an activation the words fully predict has no residual; one 3 standard deviations above has 3
    assert torch.allclose(fits.residual("w8", offset + slope * words[:1], words[:1]), torch.zeros(1, 3), atol=0.05)
    assert torch.allclose(
        fits.residual("w8", offset + slope * words[:1] + 3 * sigma, words[:1]), torch.full((1, 3), 3.0), atol=0.05
    )
