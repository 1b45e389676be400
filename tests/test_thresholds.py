"""Control-corpus thresholds that hold on sources they were not set on (no model needed)."""

from __future__ import annotations

import numpy as np
import torch

from hatcat.training.signal import control_thresholds, held_out_level


def _scores(shift_of: dict[str, float], n: int = 4000, concepts: int = 6) -> tuple[torch.Tensor, np.ndarray]:
    gen = torch.Generator().manual_seed(0)
    parts = [torch.randn(n, concepts, generator=gen) + shift for shift in shift_of.values()]
    return torch.cat(parts), np.repeat(list(shift_of), n)


def test_a_source_that_scores_higher_makes_the_level_stricter_than_the_target() -> None:
    z, source = _scores({"a": 0.0, "b": 0.0, "c": 0.4})
    level = held_out_level(z, source, 0.01)
    assert level < 0.01
    out = torch.from_numpy(source == "c")
    kept = (z[out] >= control_thresholds(z[~out], level)).float().mean(0)
    naive = (z[out] >= control_thresholds(z[~out], 0.01)).float().mean(0)
    assert float(kept.mean()) < float(naive.mean())


def test_a_single_source_keeps_the_target_level() -> None:
    z, source = _scores({"a": 0.0})
    assert held_out_level(z, source, 0.01) == 0.01
