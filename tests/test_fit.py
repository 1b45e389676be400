"""The probe-fitting maths on synthetic data, checked against scikit-learn (no model)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import roc_auc_score

from hatcat.training.fit import Rows, at_threshold, auroc, fit_lda


def gaussian_classes(n: int = 400, d: int = 16, shift: float = 0.6, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2 * n, d))
    y = np.r_[np.ones(n), np.zeros(n)]
    x[:n] += shift * rng.normal(size=d)  # the positives' mean moves along a random direction
    return torch.tensor(x, dtype=torch.float32), y


def one_concept(y: np.ndarray) -> Rows:
    return Rows(pos=[np.flatnonzero(y == 1)], hard=[np.flatnonzero(y == 0)], easy=[np.zeros(0, dtype=np.int64)])


def test_lda_directions_separate_as_well_as_scikit_learns_lda() -> None:
    x, y = gaussian_classes()
    x_test, y_test = gaussian_classes(seed=0)[0] + torch.randn(800, 16) * 0.1, y
    weight, bias, mean, std = fit_lda(x, one_concept(y), shrinkage=0.2)
    ours = auroc((((x_test - mean) / std) @ weight.T + bias)[:, 0].numpy(), y_test)
    reference = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=0.2).fit(x.numpy(), y)
    theirs = roc_auc_score(y_test, reference.decision_function(x_test.numpy()))
    assert ours > 0.9 and abs(ours - theirs) < 0.02


def test_undefined_metrics_are_nan_or_zero_not_errors() -> None:
    assert np.isnan(auroc(np.array([0.1, 0.9]), np.array([1, 1])))
    point = at_threshold(np.array([0.1, 0.2]), np.array([1, 0]), 0.5)
    assert point == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "fpr": 0.0}
