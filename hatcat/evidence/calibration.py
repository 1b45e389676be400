"""Calibration from the corpus scan: one scale for ranking all concepts, and a family-wise firing rule.

Stored beside the probe pack in `calibration.safetensors` ([N] each, rows in `evidence.json`'s `concepts`
order, with each row's `fingerprint` so that a row retrained since the scan keeps the pack's values):

- `act_*`, `words_*` (`u`, `nlp`, `beta`, `nls`): each side's surprisal on ordinary text (hatcat/ranking.py),
  from the concept's dev-token histogram of its activation logit (the scan) and of its words-only logit
  (`words.py`): the empirical survival function, an exponential tail past the RANK_TAIL quantile. The rank
  score (their sum per token) and the response-level rule were chosen on dev by experiments/open_set.py;
- `fire_logit`: the family-wise firing point. Each ranked concept gets an equal share of a budget of
  expected firings per ordinary token; its threshold is where an exponential tail fitted to its dev
  logits past a high quantile puts that share (never below the pack's own threshold). The budget and
  the quantile are chosen on dev alone: the corpus's dev documents fall in two folds, thresholds fitted
  on one fold must keep the other under 0.8 x the bound of 0.1 firings per token both ways, and the
  largest such budget is kept (then refitted on both folds). The test part only measures.
Behaviour rows (`hatcat.ranking.BEHAVIOURS`: the safety meld's `Deception`) leave the firing count.
"""

from __future__ import annotations

import torch

from hatcat.evidence.dashboards import edges
from hatcat.evidence.scan import HIST_BINS, ScanState
from hatcat.ranking import rankable

BOUND = 0.1  # expected concept firings per ordinary token, all concepts together
MARGIN = 0.8  # the dev cross-fit must stay under MARGIN * BOUND
BUDGETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)  # per-token budgets tried on dev
TAILS = (0.9, 0.99)  # where the exponential tail is fitted (dev quantile of each concept's logits)
RANK_TAIL = 0.99  # where the rank score's surprisal turns from the histogram to the exponential tail


def _tail(hist: torch.Tensor, tail: float) -> tuple[torch.Tensor, ...]:
    """Per concept of a [N, BINS] histogram: the edge where its `tail` quantile starts (u), the share of tokens
    at or past it (p_u), their mean excess over it, and [N, BINS] the share at or past each edge."""
    e = edges()
    width = float(e[1] - e[0])
    h = hist.double()
    tokens = h.sum(1).clamp(min=1)
    past = h.flip(1).cumsum(1).flip(1) / tokens[:, None]  # [N, BINS]: share at or past each edge
    u_bin = (past > 1 - tail).sum(1).clamp(max=HIST_BINS - 1)
    u = e[u_bin].double()
    p_u = past.gather(1, u_bin[:, None])[:, 0]
    above = torch.arange(HIST_BINS)[None, :] >= u_bin[:, None]
    excess = (((e + width / 2).double()[None, :] - u[:, None]) * h * above).sum(1) / (h * above).sum(1).clamp(min=1)
    return u, p_u, excess, past, tokens


def surprisal(hist: torch.Tensor, tail: float = RANK_TAIL) -> dict[str, torch.Tensor]:
    """hatcat.ranking.Surprisal's fields from a [N, BINS] histogram of ordinary-text logits."""
    u, p_u, excess, past, tokens = _tail(hist, tail)
    floor = 0.5 / tokens[:, None]  # an edge no token reached: rarer than one token in the histogram
    return {
        "u": u.float(),
        "nlp": -torch.maximum(p_u, floor[:, 0]).log().float(),
        "beta": excess.clamp(min=0.05).float(),
        "nls": -past.clamp(min=floor).log().half(),
    }


def fire_logits(hist: torch.Tensor, alpha: torch.Tensor, floor: torch.Tensor, tail: float) -> torch.Tensor:
    """[N]: per concept the logit its ordinary tokens pass with probability `alpha[c]`, from an exponential
    tail fitted past its `tail` quantile (P(x > t) = p_u exp(-(t - u) / mean excess)), rounded up to a
    histogram edge (so that counts past it are exact) and never below `floor` (the pack's threshold)."""
    e = edges()
    width = float(e[1] - e[0])
    u, p_u, excess, _, _ = _tail(hist, tail)
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
    state: ScanState, concepts: list[str], pack_cap: torch.Tensor, fingerprints: torch.Tensor, words_hist: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict]:
    """The calibration tensors from a scan's dev parts and the words side's dev histogram, and how they were
    chosen."""
    ranked = rankable(concepts)
    cap = pack_cap.float()
    budget, tail, tried = choose(state, ranked, cap)
    dev_hist = state.hist[0] + state.hist[1]
    tensors = {
        "fire_logit": thresholds(dev_hist, ranked, cap, budget, tail).float(),
        "fingerprint": fingerprints.float(),
        **{f"act_{k}": v for k, v in surprisal(dev_hist).items()},
        **{f"words_{k}": v for k, v in surprisal(words_hist).items()},
    }
    return tensors, {"budget": budget, "tail": tail, "tried_on_dev": tried, "rank_tail": RANK_TAIL}


def firing_rates(hist: torch.Tensor, tokens: int, fire: torch.Tensor) -> torch.Tensor:
    """[N]: each concept's share of a histogram's tokens at or past `fire` (rounded to the nearest edge)."""
    idx = ((fire - edges()[0]) / (edges()[1] - edges()[0])).round().long().clamp(0, HIST_BINS - 1)
    return hist.flip(1).cumsum(1).flip(1).gather(1, idx[:, None])[:, 0].double() / max(tokens, 1)


def expected_firings(hist: torch.Tensor, tokens: int, fire: torch.Tensor, ranked: torch.Tensor) -> float:
    """Expected concept firings per token at or past `fire` on a histogram's tokens: the sum of per-concept rates
    (exact for thresholds on bin edges, as the family-wise ones are; others are rounded to the nearest edge)."""
    return float(firing_rates(hist, tokens, fire)[ranked].sum())
