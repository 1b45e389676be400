"""Calibration from the corpus scan: one scale for ranking all concepts, and a family-wise firing rule.

Stored beside the probe pack in `calibration.safetensors` ([N] each, rows in `evidence.json`'s `concepts`
order, with each row's `fingerprint` so that a row retrained since the scan keeps the pack's values):

- `rank_center`, `rank_scale`: a concept's comparable score is `(activation logit - center) / scale`,
  its z on the reference corpus (mean and standard deviation of its logit on the dev tokens): ranked by
  the max over a text's tokens, the best of the scores compared on dev by experiments/open_set.py;
- `fire_logit`: the family-wise firing point. Each ranked concept gets an equal share of a budget of
  expected firings per ordinary token; its threshold is where an exponential tail fitted to its dev
  logits past a high quantile puts that share (never below the pack's own threshold). The budget and
  the quantile are chosen on dev alone: the corpus's dev documents fall in two folds, thresholds fitted
  on one fold must keep the other under 0.8 x the bound of 0.1 firings per token both ways, and the
  largest such budget is kept (then refitted on both folds). The test part only measures.
- `rankable`: 1 for concept rows, 0 for read-outs that are not concepts (the safety meld's `Deception`),
  which leave the concept ranking and firing count.
"""

from __future__ import annotations

import torch

from hatcat.evidence.dashboards import edges
from hatcat.evidence.scan import HIST_BINS, ScanState

BOUND = 0.1  # expected concept firings per ordinary token, all concepts together
MARGIN = 0.8  # the dev cross-fit must stay under MARGIN * BOUND
BUDGETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)  # per-token budgets tried on dev
TAILS = (0.9, 0.99)  # where the exponential tail is fitted (dev quantile of each concept's logits)
BEHAVIOURS = ("Deception",)  # rows that are read-outs, not concepts


def rankable(concepts: list[str]) -> torch.Tensor:
    return torch.tensor([c not in BEHAVIOURS for c in concepts])


def fire_logits(hist: torch.Tensor, alpha: torch.Tensor, floor: torch.Tensor, tail: float) -> torch.Tensor:
    """[N]: per concept the logit its ordinary tokens pass with probability `alpha[c]`, from an exponential
    tail fitted past its `tail` quantile (P(x > t) = p_u exp(-(t - u) / mean excess)), rounded up to a
    histogram edge (so that counts past it are exact) and never below `floor` (the pack's threshold)."""
    e = edges()
    width = float(e[1] - e[0])
    h = hist.double()
    tokens = h.sum(1).clamp(min=1)
    past = h.flip(1).cumsum(1).flip(1)  # [N, BINS]: tokens at or past each edge
    u_bin = (past / tokens[:, None] > 1 - tail).sum(1).clamp(max=HIST_BINS - 1)
    u = e[u_bin].double()
    p_u = past.gather(1, u_bin[:, None])[:, 0] / tokens
    above = torch.arange(HIST_BINS)[None, :] >= u_bin[:, None]
    excess = (((e + width / 2).double()[None, :] - u[:, None]) * h * above).sum(1) / (h * above).sum(1).clamp(min=1)
    t = u + excess * torch.log((p_u / alpha.double()).clamp(min=1))
    t_bin = torch.ceil((t - float(e[0])) / width).long().clamp(0, HIST_BINS - 1)
    return torch.maximum(e[t_bin], floor.float())


def thresholds(hist: torch.Tensor, ranked: torch.Tensor, cap: torch.Tensor, budget: float, tail: float) -> torch.Tensor:
    """Family-wise firing logits: each ranked concept gets `budget / concepts`; other rows keep the pack's."""
    alpha = torch.full((len(ranked),), budget / int(ranked.sum()))
    return torch.where(ranked, fire_logits(hist, alpha, cap, tail), cap.float())


def choose(state: ScanState, ranked: torch.Tensor, cap: torch.Tensor) -> tuple[float, float, list[dict]]:
    """(budget, tail) chosen on dev by cross-fitting the two dev folds: the largest budget whose thresholds fitted
    on one fold keep the other fold under MARGIN * BOUND firings per token both ways; and every setting tried."""
    tried = []
    for tail in TAILS:
        for budget in BUDGETS:
            cross = [
                expected_firings(
                    state.hist[b], int(state.tokens[b]), thresholds(state.hist[a], ranked, cap, budget, tail), ranked
                )
                for a, b in ((0, 1), (1, 0))
            ]
            tried.append({"tail": tail, "budget": budget, "cross_fit": [round(c, 4) for c in cross]})
    ok = [t for t in tried if max(t["cross_fit"]) <= MARGIN * BOUND]
    best = (
        max(ok, key=lambda t: (t["budget"], -max(t["cross_fit"])))
        if ok
        else min(tried, key=lambda t: max(t["cross_fit"]))
    )
    return best["budget"], best["tail"], tried


def calibrate(
    state: ScanState, concepts: list[str], pack_cap: torch.Tensor, fingerprints: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict]:
    """The calibration tensors from a scan's dev parts, and how they were chosen."""
    ranked = rankable(concepts)
    cap = pack_cap.float()
    budget, tail, tried = choose(state, ranked, cap)
    dev_hist, tokens = state.hist[0] + state.hist[1], max(int(state.tokens[0] + state.tokens[1]), 1)
    mean = (state.sum[0] + state.sum[1]) / tokens
    std = ((state.sumsq[0] + state.sumsq[1]) / tokens - mean.square()).clamp(min=1e-6).sqrt()
    fire = thresholds(dev_hist, ranked, cap, budget, tail)
    tensors = {
        "rank_center": mean.float(),
        "rank_scale": std.float(),
        "fire_logit": fire.float(),
        "rankable": ranked.to(torch.uint8),
        "fingerprint": fingerprints.float(),
    }
    return tensors, {"budget": budget, "tail": tail, "tried_on_dev": tried}


def firing_rates(hist: torch.Tensor, tokens: int, fire: torch.Tensor) -> torch.Tensor:
    """[N]: each concept's share of a histogram's tokens at or past `fire` (rounded to the nearest edge)."""
    idx = ((fire - edges()[0]) / (edges()[1] - edges()[0])).round().long().clamp(0, HIST_BINS - 1)
    return hist.flip(1).cumsum(1).flip(1).gather(1, idx[:, None])[:, 0].double() / max(tokens, 1)


def expected_firings(hist: torch.Tensor, tokens: int, fire: torch.Tensor, ranked: torch.Tensor) -> float:
    """Expected concept firings per token at or past `fire` on a histogram's tokens: the sum of per-concept rates
    (exact for thresholds on bin edges, as the family-wise ones are; others are rounded to the nearest edge)."""
    return float(firing_rates(hist, tokens, fire)[ranked].sum())
