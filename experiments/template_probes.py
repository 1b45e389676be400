"""The template recipe's calibration, kept for `experiments/tap_sweep.py` (the shipped pack no longer
uses it: its scores and thresholds are set on the control corpus, `hatcat/training/signal.py`).

LDA directions (`hatcat.training.fit.fit_lda`) fitted on the template prompts' train split; a
per-concept Platt scaling fitted on the validation split turns scores into probabilities; the
threshold maximises validation F1, raised where needed so that at most 1% of the concept's
validation negatives (and background rows) fire. Held-out metrics come from the test split.
"""

from __future__ import annotations

import numpy as np
import torch

from hatcat.training.fit import LinearProbes, Rows, at_threshold, auroc, fit_lda


def calibrate(scores_of, rows: Rows, n_concepts: int, steps: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-concept Platt scaling (a, beta), fitted jointly by Newton steps on class-balanced pairs.

    `scores_of(concept_idx, row_idx)` gives raw scores for paired arrays of indices.
    """
    concept, row, label, weight = [], [], [], []
    for c in range(n_concepts):
        r, y = rows.labelled(c)
        if y.sum() == 0 or y.sum() == len(y):
            continue
        extra = rows.background_sample(c)
        r, y = np.concatenate([r, extra]), np.concatenate([y, np.zeros(len(extra))])
        concept.append(np.full(len(r), c))
        row.append(r)
        label.append(y)
        weight.append(np.where(y == 1, 0.5 / y.sum(), 0.5 / (len(y) - y.sum())))
    a, beta = torch.ones(n_concepts), torch.zeros(n_concepts)
    if not concept:
        return a, beta
    c_idx = torch.from_numpy(np.concatenate(concept))
    s = scores_of(c_idx, torch.from_numpy(np.concatenate(row)))
    y = torch.from_numpy(np.concatenate(label)).float()
    w = torch.from_numpy(np.concatenate(weight)).float()
    # Put every concept's scores on a unit scale first, so Newton starts near the answer.
    center = torch.zeros(n_concepts).index_add_(0, c_idx, w * s) / 2  # halfway between class means
    spread = torch.zeros(n_concepts).index_add_(0, c_idx, w * (s - center[c_idx]) ** 2).sqrt().clamp(min=1e-6)
    s = (s - center[c_idx]) / spread[c_idx]
    ridge = 1e-3  # keeps a perfectly separated concept's slope finite
    for _ in range(steps):
        p = torch.sigmoid(a[c_idx] * s + beta[c_idx])
        g = w * (p - y)
        h = w * p * (1 - p)
        g_a = torch.zeros(n_concepts).index_add_(0, c_idx, g * s) + ridge * (a - 1)
        g_b = torch.zeros(n_concepts).index_add_(0, c_idx, g) + ridge * beta
        h_aa = torch.zeros(n_concepts).index_add_(0, c_idx, h * s * s) + ridge
        h_ab = torch.zeros(n_concepts).index_add_(0, c_idx, h * s)
        h_bb = torch.zeros(n_concepts).index_add_(0, c_idx, h) + ridge
        det = h_aa * h_bb - h_ab * h_ab
        a = a - ((h_bb * g_a - h_ab * g_b) / det).clamp(-2, 2)  # damped: a saturated start cannot overshoot
        beta = beta - ((h_aa * g_b - h_ab * g_a) / det).clamp(-2, 2)
    # back to the raw score scale: a * (s - center) / spread + beta
    return a / spread, beta - a * center / spread


def fit_probes(
    x_train: torch.Tensor, train: Rows, x_val: torch.Tensor, val: Rows, shrinkage: float = 0.2
) -> LinearProbes:
    """LDA on train, Platt scaling and F1-optimal thresholds on val, folded into one raw-space matrix."""
    weight, bias, mean, std = fit_lda(x_train, train, shrinkage)
    z_val = (x_val.float() - mean) / std
    a, beta = calibrate(lambda c, r: (weight[c] * z_val[r]).sum(1) + bias[c], val, len(weight))
    raw_weight = a[:, None] * weight / std
    raw_bias = a * (bias - (weight * mean / std).sum(1)) + beta
    probes = LinearProbes(raw_weight, raw_bias, torch.full((len(weight),), 0.5))
    probes.threshold = best_thresholds(probes.probs(x_val), val)
    return probes


def best_thresholds(probs: torch.Tensor, rows: Rows, max_fpr: float = 0.01) -> torch.Tensor:
    """Per concept: the threshold with the best F1 on its balanced rows, raised where needed so at
    most `max_fpr` of all its negatives fire. A monitor scores thousands of concepts on every
    token, so a false-positive rate that looks small for one concept floods the report."""
    out = torch.full((probs.shape[1],), 0.5)
    p = probs.numpy()
    for c in range(probs.shape[1]):
        r, y = rows.labelled(c, balanced=True)
        if y.sum() == 0 or y.sum() == len(y):
            continue
        s = p[r, c]
        order = np.argsort(-s)
        tp = np.cumsum(y[order])
        f1 = 2 * tp / (np.arange(1, len(y) + 1) + y.sum())
        k = int(np.argmax(f1))
        # midway between the last accepted and the next score: robust to small shifts
        nxt = s[order][k + 1] if k + 1 < len(s) else s[order][k] - 1e-3
        all_r, all_y = rows.labelled(c)
        negatives = np.concatenate([p[all_r[all_y == 0], c], p[rows.background, c]])
        out[c] = float(max((s[order][k] + nxt) / 2, np.quantile(negatives, 1 - max_fpr)))
    return out


def metrics(probs: torch.Tensor, threshold: torch.Tensor, rows: Rows) -> list[dict[str, float | int]]:
    """Held-out precision, recall, F1, AUROC on each concept's balanced set, and its false-positive
    rate over all of its negatives (what a monitor scanning many unrelated texts sees)."""
    p, t = probs.numpy(), threshold.numpy()
    out = []
    for c in range(probs.shape[1]):
        r, y = rows.labelled(c, balanced=True)
        s = p[r, c]
        point = at_threshold(s, y, t[c])
        all_r, all_y = rows.labelled(c)
        all_neg = p[all_r[all_y == 0], c]
        out.append(
            {
                **{k: round(point[k], 4) for k in ("precision", "recall", "f1")},
                "auroc": round(auroc(s, y), 4),
                "fpr_all_negatives": round(float((all_neg >= t[c]).mean()), 4) if len(all_neg) else float("nan"),
                "fpr_background": round(float((p[rows.background, c] >= t[c]).mean()), 4)
                if len(rows.background)
                else float("nan"),
                "threshold": round(float(t[c]), 4),
                "n_pos": int(y.sum()),
                "n_neg": int(len(y) - y.sum()),
            }
        )
    return out
