"""Deception probe recipes: how a text's tap states become one linear probe, and how it scores texts.

A recipe fixes four knobs, all chosen on dev data (`experiments/deception.py`):

- pooling:  `token` (every answer token is a sample; a text's score is its mean token
            probability), `mean` (the mean of the answer's token states is the sample) or `last`
            (the answer's last token state; what the monitor sees once the answer is complete).
- fit:      `lda` (shrunk within-class covariance, standardised features), `dom` (difference of
            class means, no whitening) or `logistic` (L2, C=0.1, standardised features).
- data:     `instructed` (true/false facts after honest or lying instructions), `dialogue`
            (content-matched dialogues, data/honesty/dialogues.yaml) or `both` (each source and
            class weighs the same).
- centred:  fit on contrast-pair-centred states: from each state the mean of its pair at the
            same token position is subtracted (the pair's two texts share the answer, so only
            what differs between honest and deceptive is left). Scoring never centres.

Every probe is then Platt-scaled on the calibration items, its threshold set so that `fpr` of
their honest samples fire, and folded into one raw-space row: p = sigmoid(x . w + b), the same
form as a concept pack's activation row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from hatcat.training.deception import Item
from hatcat.training.fit import LinearProbes
from hatcat.training.states import TokenStateCache

POOLINGS = ("token", "mean", "last")
FITS = ("lda", "dom", "logistic")
DATA = ("instructed", "dialogue", "both")


@dataclass(frozen=True)
class Recipe:
    pooling: str
    fit: str
    data: str
    centred: bool

    @property
    def name(self) -> str:
        return f"{self.data}/{self.fit}/{self.pooling}" + ("/centred" if self.centred else "")

    def as_dict(self) -> dict:
        return asdict(self)


def recipes() -> list[Recipe]:
    """The grid compared on dev. Centring changes nothing for `dom` (balanced pairs), so it is skipped."""
    return [
        Recipe(p, f, d, c)
        for d in DATA
        for f in FITS
        for p in POOLINGS
        for c in (False, True)
        if not (c and f == "dom")
    ]


def pooled(cache: TokenStateCache, items: list[Item], pooling: str) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Samples [R, d] of `items` under `pooling`, the item each row comes from, and its token position."""
    states = [cache.rows[it.key].float() for it in items]
    if pooling == "token":
        owner = np.repeat(np.arange(len(items)), [len(s) for s in states])
        position = np.concatenate([np.arange(len(s)) for s in states])
        return torch.cat(states), owner, position
    rows = [s.mean(0) if pooling == "mean" else s[-1] for s in states]
    return torch.stack(rows), np.arange(len(items)), np.zeros(len(items), dtype=np.int64)


def _centre(
    x: torch.Tensor, items: list[Item], owner: np.ndarray, position: np.ndarray
) -> tuple[torch.Tensor, np.ndarray]:
    """Subtract each (pair, position) group's mean; rows without a partner are dropped. Returns (x, kept rows)."""
    keys = np.array([f"{items[o].pair}\x00{p}" if items[o].pair else "" for o, p in zip(owner, position)])
    _, group, size = np.unique(keys, return_inverse=True, return_counts=True)
    keep = (keys != "") & (size[group] > 1)
    group = torch.from_numpy(group[keep])
    xk = x[torch.from_numpy(keep)]
    sums = torch.zeros(int(group.max()) + 1 if len(group) else 0, x.shape[1]).index_add_(0, group, xk)
    counts = torch.bincount(group, minlength=len(sums)).clamp(min=1)[:, None]
    return xk - (sums / counts)[group], np.flatnonzero(keep)


def _weights(items: list[Item], owner: np.ndarray) -> np.ndarray:
    """Sample weights under which every (source group, class) weighs the same in total."""
    cells = np.array([f"{items[o].group}\x00{items[o].label}" for o in owner])
    _, cell, count = np.unique(cells, return_inverse=True, return_counts=True)
    w = 1.0 / count[cell]
    return w / w.mean()


def _direction(x: torch.Tensor, y: np.ndarray, w: np.ndarray, fit: str, shrinkage: float = 0.2) -> torch.Tensor:
    """A raw-space weight vector [d] pointing from honest to deceptive."""
    wt = torch.from_numpy(w).float()[:, None]
    pos, neg = torch.from_numpy(y == 1), torch.from_numpy(y == 0)
    mean_of = lambda z, m: (wt[m] * z[m]).sum(0) / wt[m].sum()
    if fit == "dom":
        return mean_of(x, pos) - mean_of(x, neg)
    mean, std = (wt * x).sum(0) / wt.sum(), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    if fit == "lda":
        mu1, mu0 = mean_of(z, pos), mean_of(z, neg)
        r = z - torch.where(pos[:, None], mu1, mu0)
        cov = (wt * r).T @ r / wt.sum()
        cov = (1 - shrinkage) * cov + shrinkage * torch.eye(len(cov)) * cov.diagonal().mean()
        return torch.linalg.solve(cov, mu1 - mu0) / std
    if fit == "logistic":
        model = LogisticRegression(C=0.1, max_iter=500)
        model.fit(z.numpy(), y, sample_weight=w)
        return torch.from_numpy(model.coef_[0]).float() / std
    raise ValueError(f"unknown fit {fit!r}; one of {FITS}")


def fit_recipe(
    cache: TokenStateCache, recipe: Recipe, train: list[Item], calib: list[Item], fpr: float = 0.05
) -> LinearProbes:
    """Fit `recipe` on `train`, Platt-scale it and set its threshold on `calib`."""
    x, owner, position = pooled(cache, train, recipe.pooling)
    rows = np.arange(len(x))
    if recipe.centred:
        x, rows = _centre(x, train, owner, position)
    y = np.array([train[o].label for o in owner[rows]])
    w = _weights(train, owner[rows])
    direction = _direction(x, y, w, recipe.fit)
    xc, own_c, _ = pooled(cache, calib, recipe.pooling)
    yc = np.array([calib[o].label for o in own_c])
    raw = (xc @ direction).numpy()[:, None]
    platt = LogisticRegression(C=1e4).fit(raw, yc, sample_weight=_weights(calib, own_c))
    a, b = float(platt.coef_[0, 0]), float(platt.intercept_[0])
    probe = LinearProbes((a * direction)[None], torch.tensor([b]), torch.tensor([0.5]))
    honest = probe.probs(xc[torch.from_numpy(yc == 0)])[:, 0].numpy()
    probe.threshold = torch.tensor([float(np.quantile(honest, 1 - fpr))])
    return probe


def item_scores(probe: LinearProbes, cache: TokenStateCache, items: list[Item], pooling: str) -> np.ndarray:
    """One score per item: its probability under `pooling` (mean token probability for `token`)."""
    x, owner, _ = pooled(cache, items, pooling)
    p = probe.probs(x)[:, 0].numpy()
    return np.bincount(owner, weights=p, minlength=len(items)) / np.maximum(np.bincount(owner, minlength=len(items)), 1)
