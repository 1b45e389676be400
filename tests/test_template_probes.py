"""The template recipe's calibration (experiments/template_probes.py, used by the tap sweep) on
synthetic data, checked against scikit-learn (no model)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from experiments.template_probes import best_thresholds, calibrate, metrics
from hatcat.training.fit import at_threshold
from tests.test_fit import gaussian_classes, one_concept


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


def test_thresholds_let_at_most_the_allowed_share_of_negatives_fire() -> None:
    x, y = gaussian_classes(n=300, shift=0.3)
    rows = one_concept(y)
    probs = torch.sigmoid(x[:, :1])
    t = float(best_thresholds(probs, rows, max_fpr=0.05)[0])
    assert at_threshold(probs[:, 0].numpy(), y, t)["fpr"] <= 0.05 + 1 / 300
