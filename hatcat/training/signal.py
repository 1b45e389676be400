"""Probe directions for transfer, scores comparable across concepts, and divergence as a residual.

Directions (`directions`), all one row per concept of one weight matrix:
- `dom`: difference of means, mu_pos - mu_neg, on per-dimension standardised features (no
  covariance whitening; a few dimensions of the residual stream are orders of magnitude larger
  than the rest, standardising stops them from owning the direction);
- `lda`: the same with a shrunk shared covariance inverse (hatcat/training/fit.py);
- `logistic`: L2 logistic regression per concept (scikit-learn), class-balanced.
mu_neg weighs hard negatives (siblings/cousins), easy ones (distant concepts) and background
(every token of the control corpus) equally.

Comparable scores (`standardise_on_control`): a concept's raw logit is shifted and scaled so that
on ordinary text (control-corpus tokens) it has mean 0 and standard deviation 1: z = (l - m) / s.
Top-1 among concepts is then the concept whose score stands furthest out of its own ordinary
range. The bank stores logit = z - Z_MID, so activation 0.5 means "Z_MID standard deviations above
ordinary text" for every concept.

Thresholds (`control_thresholds`): per concept, the (1 - level) quantile of z over control tokens.
The level is not the target FPR itself (`held_out_level`): a quantile set on some sources lets
through more than its share of another source's tokens, so the level is the largest one at which
thresholds set without one dev source keep the target FPR on that source for 95% of
(concept, source) pairs (leave-one-source-out over the control corpus's dev part; the test part,
other sources and authors, then checks it).

Divergence (`capped_residual`, `divergence_scale`): the words-only side is a detector of the same
kind on the words features (the monitor's window of mean input embeddings), standardised on the
control corpus the same way, so z_words is "how far the words alone stand out for this concept".
divergence = tanh((min(z, z_threshold) - z_words) / D_c): the activation evidence, counted up to
the concept's firing point, that the words do not account for. Capping matters: a text that names
a concept drives the activation far past its threshold, and an uncapped difference then grows with
how loudly the concept is named (on the dev pairs, named text scored higher than implied text
without the cap: token-mean AUROC 0.78 uncapped vs 0.94 capped, on dev).
D_c puts the colour scale's midpoint (0.5) at DIV_MID_SD of the concept's own residual standard
deviations on control text, or more where needed so that at most 5% of the control corpus's dev
tokens are coloured beyond it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hatcat.training.fit import Rows, fit_lda

METHODS = ("dom", "lda", "logistic")
Z_MID = 3.0  # activation 0.5 <=> 3 control-corpus standard deviations above ordinary text
DIV_MID_SD = 3.0  # divergence 0.5 <=> a residual of 3 residual standard deviations


def directions(x: torch.Tensor, rows: Rows, method: str, c_reg: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw-feature-space (weight [N, d], bias [N]) for every concept in `rows`."""
    if method == "lda":
        w, b, mean, std = fit_lda(x, rows, shrinkage=0.2)
    elif method == "dom":
        w, b, mean, std = fit_lda(x, rows, shrinkage=1.0)  # identity covariance: difference of means
    elif method == "logistic":
        return _logistic(x, rows, c_reg)
    else:
        raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    return w / std, b - (w * mean / std).sum(1)


def _logistic(x: torch.Tensor, rows: Rows, c_reg: float) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.linear_model import LogisticRegression

    x = x.float()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = ((x - mean) / std).numpy()
    weight, bias = np.zeros((len(rows.pos), x.shape[1]), dtype=np.float32), np.zeros(len(rows.pos), dtype=np.float32)
    for c in range(len(rows.pos)):
        r, y = rows.labelled(c)
        extra = rows.background_sample(c, k=512)
        r, y = np.concatenate([r, extra]), np.concatenate([y, np.zeros(len(extra))])
        if y.min() == y.max():
            continue
        model = LogisticRegression(C=c_reg, class_weight="balanced", max_iter=300)
        model.fit(z[r], y)
        weight[c], bias[c] = model.coef_[0], model.intercept_[0]
    w = torch.from_numpy(weight)
    return w / std, torch.from_numpy(bias) - (w * mean / std).sum(1)


def standardise_on_control(
    weight: torch.Tensor, bias: torch.Tensor, control: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale so each concept's logit has mean 0, sd 1 over control tokens [n, d]."""
    logits = control.float() @ weight.T + bias
    m, s = logits.mean(0), logits.std(0).clamp(min=1e-6)
    return weight / s[:, None], (bias - m) / s


def control_thresholds(z_control: torch.Tensor, fpr: float) -> torch.Tensor:
    """Per concept the z above which at most `fpr` of the control tokens [n, N] lie."""
    k = max(1, math.ceil((1 - fpr) * len(z_control)))
    return torch.cat([part.float().kthvalue(k, dim=0).values for part in z_control.split(512, dim=1)])


def held_out_level(
    z_control: torch.Tensor, source: np.ndarray, target: float, share: float = 0.95, steps: int = 8
) -> float:
    """The control quantile level for thresholds that keep FPR <= `target` on unseen sources.

    z_control [n, N]: control tokens' scores; source [n]: each token's source. Candidate levels go
    down from `target` by factors of 0.75; the first at which thresholds set on all sources but one
    keep FPR <= target on the left-out one for `share` of (concept, source) pairs is returned (the
    smallest candidate if none does)."""
    groups = np.unique(source)
    if len(groups) < 2:
        return target  # one source: nothing to hold out
    levels = [target * 0.75**i for i in range(steps)]
    held = torch.zeros(len(levels))
    for g in groups:
        out = torch.from_numpy(source == g)
        kept = z_control[~out].float().sort(dim=0).values  # every level's threshold from one sort
        left_out = z_control[out].float()
        for i, level in enumerate(levels):
            threshold = kept[max(0, math.ceil((1 - level) * len(kept)) - 1)]
            held[i] += float(((left_out >= threshold).float().mean(0) <= target).float().mean())
        del kept
    for level, ok in zip(levels, held / len(groups)):
        if ok >= share:
            return level
    return levels[-1]


def capped_residual(z: torch.Tensor, z_words: torch.Tensor, z_threshold: torch.Tensor) -> torch.Tensor:
    """The activation evidence up to the firing point that the words do not account for:
    min(z, z_threshold) - z_words (all in control standard deviations)."""
    return torch.minimum(z, z_threshold) - z_words


def divergence_scale(
    residual_sd: torch.Tensor,
    z: torch.Tensor,
    z_words: torch.Tensor,
    z_threshold: torch.Tensor,
    max_share: float = 0.05,
) -> tuple[torch.Tensor, float]:
    """Per concept D_c with tanh(r / D_c) = 0.5 at r = k residual standard deviations, and k.

    k is DIV_MID_SD, raised where needed so that at most `max_share` of the control tokens given
    (z, z_words: [n, N]) get a colour beyond the midpoint, a token's colour being its largest
    |residual| among the concepts that fire on it (z >= z_threshold), as the monitor shows it."""
    worst = []
    for zi, wi in zip(z.split(2048), z_words.split(2048)):
        r = (capped_residual(zi, wi, z_threshold) / residual_sd).abs()
        worst.append(torch.where(zi >= z_threshold, r, torch.zeros_like(r)).max(1).values)
    k = max(DIV_MID_SD, float(torch.quantile(torch.cat(worst), 1 - max_share)))
    return k * residual_sd / math.atanh(0.5), k
