"""The probe-fitting maths on synthetic data, checked against scikit-learn (no model)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from hatcat.training.fit import Rows, at_threshold, auroc, best_thresholds, calibrate, fit_probes, metrics


def gaussian_classes(n: int = 400, d: int = 16, shift: float = 0.6, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2 * n, d))
    y = np.r_[np.ones(n), np.zeros(n)]
    x[:n] += shift * rng.normal(size=d)  # the positives' mean moves along a random direction
    return torch.tensor(x, dtype=torch.float32), y


def one_concept(y: np.ndarray) -> Rows:
    return Rows(pos=[np.flatnonzero(y == 1)], hard=[np.flatnonzero(y == 0)], easy=[np.zeros(0, dtype=np.int64)])


def test_lda_probe_separates_as_well_as_scikit_learns_lda() -> None:
    x, y = gaussian_classes()
    x_test, y_test = gaussian_classes(seed=0)[0] + torch.randn(800, 16) * 0.1, y
    probe = fit_probes(x, one_concept(y), x, one_concept(y), shrinkage=0.2)
    ours = auroc(probe.probs(x_test)[:, 0].numpy(), y_test)
    reference = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=0.2).fit(x.numpy(), y)
    theirs = roc_auc_score(y_test, reference.decision_function(x_test.numpy()))
    assert ours > 0.9 and abs(ours - theirs) < 0.02


def test_platt_calibration_matches_a_balanced_logistic_regression() -> None:
    rng = np.random.default_rng(1)
    scores = np.r_[rng.normal(2.0, 1.0, 300), rng.normal(-1.0, 1.5, 500)]
    y = np.r_[np.ones(300), np.zeros(500)]
    s = torch.tensor(scores, dtype=torch.float32)
    a, beta = calibrate(lambda c, r: s[r], one_concept(y), 1, steps=100)
    reference = LogisticRegression(C=1e6, class_weight="balanced").fit(scores[:, None], y)
    ours = torch.sigmoid(a[0] * s + beta[0]).numpy()
    theirs = reference.predict_proba(scores[:, None])[:, 1]
    assert np.abs(ours - theirs).max() < 0.02  # a small ridge keeps separable concepts finite: not bit-equal


def test_metrics_agree_with_scikit_learn_on_each_concepts_balanced_rows() -> None:
    x, y = gaussian_classes(n=200)
    rows = one_concept(y)
    probs = torch.sigmoid(x[:, :1] * 2)  # a weak detector: one coordinate
    threshold = torch.tensor([0.55])
    m = metrics(probs, threshold, rows)[0]
    r, labels = rows.labelled(0, balanced=True)
    p, rec, f1, _ = precision_recall_fscore_support(
        labels, probs[r, 0].numpy() >= 0.55, average="binary", zero_division=0
    )
    assert (m["precision"], m["recall"], m["f1"]) == (round(p, 4), round(rec, 4), round(f1, 4))
    assert m["auroc"] == round(roc_auc_score(labels, probs[r, 0].numpy()), 4)
    assert (m["n_pos"], m["n_neg"]) == (labels.sum(), len(labels) - labels.sum())


def test_undefined_metrics_are_nan_or_zero_not_errors() -> None:
    assert np.isnan(auroc(np.array([0.1, 0.9]), np.array([1, 1])))
    point = at_threshold(np.array([0.1, 0.2]), np.array([1, 0]), 0.5)
    assert point == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "fpr": 0.0}


def test_thresholds_let_at_most_the_allowed_share_of_negatives_fire() -> None:
    x, y = gaussian_classes(n=300, shift=0.3)
    rows = one_concept(y)
    probs = torch.sigmoid(x[:, :1])
    t = float(best_thresholds(probs, rows, max_fpr=0.05)[0])
    assert at_threshold(probs[:, 0].numpy(), y, t)["fpr"] <= 0.05 + 1 / 300
