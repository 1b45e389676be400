"""Fit all concept probes of a run as one weight matrix, calibrate them, and score them.

The probe for concept c is linear discriminant analysis with a shrunk shared covariance:
    w_c = Sigma^-1 (mu_pos - mu_neg),   b_c = -w_c . (mu_pos + mu_neg) / 2
over standardised features, where mu_neg weighs hard (sibling/cousin) and easy (distant)
negatives equally: class-balanced by construction. One covariance inverse serves every
concept, so fitting thousands of concepts is a few matrix products. A per-concept Platt
scaling fitted on the validation split turns scores into probabilities that are comparable
between the activation and the text side; the threshold maximises validation F1, raised where
needed so that at most 1% of the concept's validation negatives fire. Background rows (mid-sentence
token states of other prompts, where a monitor reads while a model writes) are negatives for
every concept: a third negative mean in the fit, and part of calibration and the 1% cap.
Held-out metrics come from the test split, which neither the fit nor the calibration saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score


@dataclass
class Rows:
    """For one split: per concept, the feature rows of its positives and of its negatives."""

    pos: list[np.ndarray]
    hard: list[np.ndarray]  # siblings/cousins and a meld's own negative examples
    easy: list[np.ndarray]
    background: np.ndarray = field(
        default_factory=lambda: np.zeros(0, dtype=np.int64)
    )  # mid-sentence states, negative for all

    def background_sample(self, c: int, k: int = 32) -> np.ndarray:
        """A fixed draw of k background rows for concept c (its share in calibration)."""
        if not len(self.background):
            return self.background
        return np.random.default_rng(10_000 + c).choice(self.background, min(k, len(self.background)), replace=False)

    def labelled(self, c: int, balanced: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Rows and 0/1 labels for concept c (negatives deduplicated, positives win).

        `balanced`: as many negatives as positives, half hard and half easy where possible
        (a fixed draw per concept), the evaluation set the pack's F1 is reported on.
        """
        hard = np.setdiff1d(self.hard[c], self.pos[c])
        easy = np.setdiff1d(np.setdiff1d(self.easy[c], self.pos[c]), hard)
        if balanced:
            rng = np.random.default_rng(c)
            k = len(self.pos[c])
            n_hard = min(len(hard), (k + 1) // 2, max(k - len(easy), (k + 1) // 2))
            hard = rng.choice(hard, n_hard, replace=False)
            easy = rng.choice(easy, min(len(easy), k - n_hard), replace=False)
        neg = np.union1d(hard, easy)
        rows = np.concatenate([self.pos[c], neg])
        return rows, np.concatenate([np.ones(len(self.pos[c])), np.zeros(len(neg))])


@dataclass
class LinearProbes:
    """Calibrated probes in raw feature space: p = sigmoid(x @ weight.T + bias)."""

    weight: torch.Tensor  # [N, d]
    bias: torch.Tensor  # [N]
    threshold: torch.Tensor  # [N] on the probability

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x.float() @ self.weight.T + self.bias)


def _mean_matrix(groups: list[np.ndarray], n_rows: int) -> torch.Tensor:
    """Sparse [N, n_rows] averaging matrix: row c averages the rows in groups[c] (zero if empty)."""
    cols = np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)
    rows = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    vals = np.concatenate([np.full(len(g), 1.0 / len(g)) for g in groups if len(g)]) if len(cols) else np.zeros(0)
    return torch.sparse_coo_tensor(
        np.stack([rows, cols]), vals, (len(groups), n_rows), dtype=torch.float32, check_invariants=False
    )


def fit_lda(
    x: torch.Tensor, rows: Rows, shrinkage: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw LDA scores' parameters: (weight [N,d], bias [N]) plus the standardisation (mean, std)."""
    x = x.float()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    cov = torch.cov(z.T)
    cov = (1 - shrinkage) * cov + shrinkage * torch.eye(cov.shape[0]) * cov.diagonal().mean()
    mu_pos = _mean_matrix(rows.pos, len(z)) @ z
    has_hard = torch.tensor([len(g) > 0 for g in rows.hard], dtype=torch.float32)[:, None]
    has_easy = torch.tensor([len(g) > 0 for g in rows.easy], dtype=torch.float32)[:, None]
    mu_hard, mu_easy = _mean_matrix(rows.hard, len(z)) @ z, _mean_matrix(rows.easy, len(z)) @ z
    has_bg = float(len(rows.background) > 0)
    mu_bg = z[rows.background].mean(0) if has_bg else torch.zeros(z.shape[1])
    # hard, easy and background negatives weigh equally, whichever are present
    mu_neg = (has_hard * mu_hard + has_easy * mu_easy + has_bg * mu_bg) / (has_hard + has_easy + has_bg).clamp(min=1)
    weight = torch.linalg.solve(cov, (mu_pos - mu_neg).T).T  # [N, d]
    bias = -(weight * (mu_pos + mu_neg) / 2).sum(1)
    return weight, bias, mean, std


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


def at_threshold(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 (0 where undefined) and false-positive rate of `scores >= threshold`."""
    y, pred = np.asarray(labels) == 1, np.asarray(scores) >= threshold
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, pred, average="binary", labels=[True], zero_division=0.0
    )
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "fpr": float((pred & ~y).sum() / max(1, (~y).sum())),
    }


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


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn); NaN when one class is missing."""
    labels = np.asarray(labels)
    if not ((labels == 1).any() and (labels == 0).any()):
        return float("nan")
    return float(roc_auc_score(labels == 1, scores))
