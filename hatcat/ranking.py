"""The one concept ranking: a per-token rank score and the response-level score built from it.

Per token, a concept's rank score is the surprisal of its evidence on ordinary text, summed over the two
sides the probe bank reads: `-log P(logit >= x)` for its activation logit plus the same for its words-only
logit, each from the concept's own distribution on the reference corpus's dev tokens (the empirical
survival function, an exponential tail past its 99% quantile; `hatcat/evidence/calibration.py` fits it).
Surprisals put every concept on one scale (nats of rarity), whatever its probe's logit range.

A response's score for a concept is the mean of its two highest per-token scores (its single one on a
one-token response); then the hierarchy rule: a child outranks its parent only with its own evidence, i.e.
a child scoring above its parent by less than `OWN_EVIDENCE` nats is placed just below that parent.
Both were chosen on the open set's dev texts (experiments/open_set.py). Behaviour rows score -inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SIDES = ("act", "words")
FIELDS = ("u", "nlp", "beta", "nls")  # stored per side as `<side>_<field>` in calibration.safetensors
GRID, BINS = (-16.0, 0.2), 200  # the survival table's first bin edge, bin width and bins (the scan's histogram)
OWN_EVIDENCE = 2.0  # nats a child needs above its parent to outrank it
BELOW = 1e-3  # how far below its parent a child without its own evidence is placed
BEHAVIOURS = ("Deception",)  # pack rows that are behaviour read-outs, not concepts: never ranked as concepts


def rankable(concepts: list[str]) -> torch.Tensor:
    """[N] bool: the rows that are concepts (ranked, counted as firings), not behaviour read-outs."""
    return torch.tensor([c not in BEHAVIOURS for c in concepts])


@dataclass
class Surprisal:
    """Per concept: where its tail starts (`u`), -log of the share of tokens past it (`nlp`), the tail's mean
    excess (`beta`) and -log survival at each bin's lower edge below the tail (`nls` [N, bins])."""

    u: torch.Tensor
    nlp: torch.Tensor
    beta: torch.Tensor
    nls: torch.Tensor

    @classmethod
    def identity(cls, n: int, device: torch.device | str, slope: float = 1.0) -> Surprisal:
        """Uncalibrated rows: `slope` x the logit (a tail from below every logit the bank gives); the words side
        uses slope 0, so that a pack without the corpus calibration ranks by its activation logit alone."""
        u = torch.full((n,), GRID[0] - 1, device=device)
        beta = torch.full((n,), 1 / slope if slope else float("inf"), device=device)
        return cls(u, slope * u, beta, torch.zeros(n, BINS, device=device))

    def __post_init__(self) -> None:
        n, bins = self.nls.shape
        self.offsets = torch.arange(n, device=self.nls.device) * bins  # row starts in the flattened table

    def __call__(self, logit: torch.Tensor) -> torch.Tensor:
        """[..., N] logits -> [..., N] surprisals: one gather for the body, vector arithmetic for the tail."""
        b = ((logit - GRID[0]) / GRID[1]).long().clamp_(0, BINS - 1)  # truncation = floor from the first edge up
        body = self.nls.view(-1).take(b + self.offsets)
        tail = (logit - self.u).div_(self.beta).add_(self.nlp)
        return torch.where(logit >= self.u, tail, body)


def top2_update(best: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
    """A stream's running two highest scores per concept [2, N] (None before its first token), after one
    more token's scores [N]."""
    if best is None:
        return torch.stack([scores, torch.full_like(scores, float("-inf"))])
    first, second = best
    return torch.stack([torch.maximum(first, scores), torch.maximum(second, torch.minimum(first, scores))])


def top2(scores: torch.Tensor) -> torch.Tensor:
    """[texts, T, N] per-token scores (padding -inf) -> [texts, 2, N] the two highest per concept."""
    found = scores.topk(min(2, scores.shape[1]), dim=1).values
    return found if found.shape[1] == 2 else found.expand(-1, 2, -1)


def response_level(best: torch.Tensor) -> torch.Tensor:
    """[..., 2, N] two highest per-token scores -> [..., N]: their mean (the one score of a one-token text)."""
    first, second = best.unbind(-2)
    return (first + torch.where(second > float("-inf"), second, first)) / 2


def own_evidence(
    score: torch.Tensor, parent_edges: tuple[torch.Tensor, torch.Tensor], margin: float = OWN_EVIDENCE
) -> torch.Tensor:
    """The hierarchy rule on response-level scores [..., N]: a child above its best parent by less than
    `margin` is placed just below that parent (children keep their order among themselves); `parent_edges`:
    (child, parent) index pairs."""
    child, parent = parent_edges
    flat = score.reshape(-1, score.shape[-1])
    best_parent = torch.full_like(flat, float("-inf")).scatter_reduce(
        1, child.expand(len(flat), -1), flat[:, parent], "amax"
    )
    gap = flat - best_parent
    demote = (gap >= 0) & (gap < margin)
    placed = best_parent - BELOW * (1 - gap / margin)
    return torch.where(demote, placed, flat).reshape(score.shape)
