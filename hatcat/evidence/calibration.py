"""Calibration from the corpus scan: one scale for ranking all concepts, and a family-wise firing rule.

Stored beside the probe pack in `calibration.safetensors` ([N] each, rows in `evidence.json`'s `concepts`
order, with each row's `fingerprint` so that a row retrained since the scan keeps the pack's values):

- `rank_center`, `rank_scale`: a concept's comparable score is `(activation logit - center) / scale`;
  center = the concept's firing logit below, scale = its standard deviation on the corpus's dev tokens
  (the rule chosen on dev by experiments/open_set.py);
- `fire_logit`: the family-wise firing point. Each ranked concept gets an equal share of a budget of
  expected firings per ordinary token (`BUDGET` on the corpus's dev tokens, half the 0.1 bound as room
  for the test part): its logit threshold is the lowest histogram edge past which at most
  `BUDGET / concepts` of the dev tokens lie, and never below the pack's own threshold;
- `rankable`: 1 for concept rows, 0 for read-outs that are not concepts (the safety meld's `Deception`),
  which leave the concept ranking and firing count.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hatcat.evidence.dashboards import edges
from hatcat.evidence.scan import HIST_BINS, ScanState
from hatcat.paths import sha256_file

BUDGET = 0.05  # expected firings per ordinary dev token, all concepts together (bound: 0.1)
FILE, SIDECAR = "calibration.safetensors", "evidence.json"
BEHAVIOURS = ("Deception",)  # rows that are read-outs, not concepts


def rankable(concepts: list[str]) -> torch.Tensor:
    return torch.tensor([c not in BEHAVIOURS for c in concepts])


def fire_logits(hist: torch.Tensor, tokens: int, share: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """[N]: per concept the lowest bin edge with at most `share[c] * tokens` tokens at or past it (>= `floor`)."""
    past = hist.flip(1).cumsum(1).flip(1)  # [N, BINS]: tokens at or past each bin's lower edge
    allowed = (share * tokens)[:, None]
    first = (past > allowed).sum(1).clamp(max=HIST_BINS - 1)  # counts fall with the edge: the first edge within
    return torch.maximum(edges()[first], floor)


def calibrate(
    state: ScanState, concepts: list[str], pack_cap: torch.Tensor, fingerprints: torch.Tensor, budget: float = BUDGET
) -> dict[str, torch.Tensor]:
    """The calibration tensors from a scan's dev statistics (`fingerprints`: `fingerprint` of the scanned rows)."""
    ranked = rankable(concepts)
    share = ranked.float() * (budget / int(ranked.sum()))
    tokens = int(state.tokens[0])
    mean = state.sum[0] / max(tokens, 1)
    std = (state.sumsq[0] / max(tokens, 1) - mean.square()).clamp(min=1e-6).sqrt()
    fire = fire_logits(state.hist[0], tokens, share, pack_cap.float())
    fire = torch.where(ranked, fire, pack_cap.float())
    return {
        "rank_center": fire.clone(),
        "rank_scale": std.float(),
        "fire_logit": fire.float(),
        "rankable": ranked.to(torch.uint8),
        "fingerprint": fingerprints.float(),
    }


def expected_firings(hist: torch.Tensor, tokens: int, fire: torch.Tensor, ranked: torch.Tensor) -> float:
    """Expected concept firings per token at or past `fire` on a histogram's tokens: the sum of per-concept rates
    (exact for thresholds on bin edges, as the family-wise ones are; others are rounded to the nearest edge)."""
    idx = ((fire - edges()[0]) / (edges()[1] - edges()[0])).round().long().clamp(0, HIST_BINS - 1)
    past = hist.flip(1).cumsum(1).flip(1).gather(1, idx[:, None])[:, 0]
    return float(past[ranked].sum()) / max(tokens, 1)


def write(folder: Path, tensors: dict[str, torch.Tensor], info: dict) -> None:
    """`calibration.safetensors` + `evidence.json` (row order, checksums of the evidence files, `info`)."""
    folder = Path(folder)
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / FILE)
    files = {name: sha256_file(folder / name) for name in (FILE, "evidence.parquet") if (folder / name).is_file()}
    (folder / SIDECAR).write_text(json.dumps({**info, "checksums": files}, indent=1) + "\n")


def fingerprint(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """[N, 2]: each probe row's weight norm and bias: a row retrained since the scan no longer matches."""
    return torch.stack([weight.float().norm(dim=1), bias.float()], 1)


def apply(bank) -> int:
    """Give a `ProbeBank` the calibration stored beside its pack, row by row (matched by concept name and
    fingerprint; other rows keep the pack's threshold and scale). Returns the number of rows calibrated."""
    folder = Path(bank.pack.folder)
    try:
        info = json.loads((folder / SIDECAR).read_text())
        if sha256_file(folder / FILE) != info["checksums"][FILE]:
            return 0
        saved = load_file(folder / FILE)
    except (OSError, ValueError, KeyError):
        return 0
    names = {c: i for i, c in enumerate(info.get("concepts", ()))}
    rows = torch.tensor([names.get(c, -1) for c in bank.concepts])
    mine = fingerprint(bank.act_weight.cpu(), bank.act_bias.cpu())
    have = rows >= 0
    match = have.clone()
    match[have] = torch.isclose(saved["fingerprint"][rows[have]], mine[have], rtol=1e-4, atol=1e-4).all(1)
    src, dst = rows[match], match.nonzero()[:, 0]
    device = bank.act_threshold.device
    bank.act_threshold[dst.to(device)] = torch.sigmoid(saved["fire_logit"][src]).to(device)
    bank.rank_center[dst.to(device)] = saved["rank_center"][src].to(device)
    bank.rank_scale[dst.to(device)] = saved["rank_scale"][src].to(device)
    bank.rankable[dst.to(device)] = saved["rankable"][src].bool().to(device)
    return int(match.sum())
