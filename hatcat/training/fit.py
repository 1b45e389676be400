"""All concept probes of a run as one weight matrix, and the scores they are judged by.

The direction for concept c is linear discriminant analysis with a shrunk shared covariance:
    w_c = Sigma^-1 (mu_pos - mu_neg),   b_c = -w_c . (mu_pos + mu_neg) / 2
over standardised features, where mu_neg weighs hard (sibling/cousin), easy (distant) and
background (every token of ordinary text, negative for every concept) negatives equally:
class-balanced by construction. One covariance inverse serves every concept, so fitting
thousands of concepts is a few matrix products (`fit_lda`). How directions become scores and
thresholds (standardised and set on the control corpus) is `hatcat/training/signal.py`.
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


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn); NaN when one class is missing."""
    labels = np.asarray(labels)
    if not ((labels == 1).any() and (labels == 0).any()):
        return float("nan")
    return float(roc_auc_score(labels == 1, scores))
