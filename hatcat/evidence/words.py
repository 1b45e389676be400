"""The words-only side on ordinary text: a histogram of every concept's words-only logit over the reference
corpus's dev windows, for the rank score's words surprisal (calibration.py). It needs only the model's input
embeddings (no forward pass), so it runs after a scan in a minute or two, not as part of it."""

from __future__ import annotations

import numpy as np
import torch

from hatcat.evidence.scan import HIST_BINS, HIST_HI, HIST_LO, Windows
from hatcat.monitor import TEXT_WINDOW
from hatcat.probes import ProbeBank

MAX_WINDOWS = 6000  # dev windows read (a fixed sample, ~750k tokens; all when fewer)


def histogram(
    embed: torch.nn.Module, bank: ProbeBank, windows: Windows, max_windows: int = MAX_WINDOWS, batch: int = 32
) -> torch.Tensor:
    """[N, BINS] words-only logits over a fixed sample of dev windows (tokens after BOS, the analysis's
    window of the TEXT_WINDOW most recent tokens, as `hatcat.monitor.window_means`)."""
    dev = np.nonzero(windows.part < 2)[0]
    picked = np.sort(np.random.default_rng(0).permutation(dev)[:max_windows])
    n, scale = len(bank), HIST_BINS / (HIST_HI - HIST_LO)
    offsets = torch.arange(n) * HIST_BINS
    hist = torch.zeros(n * HIST_BINS, dtype=torch.int64)
    device = bank.text_weight.device
    with torch.no_grad():
        for start in range(0, len(picked), batch):
            rows = picked[start : start + batch]
            width = int(windows.lengths[rows].max())
            ids = torch.from_numpy(windows.ids[rows, 1:width].astype(np.int64)).to(device)
            real = torch.arange(1, width)[None, :] < torch.from_numpy(windows.lengths[rows]).long()[:, None]
            vectors = embed(ids).float()  # [B, L, d]
            csum = torch.cat([torch.zeros_like(vectors[:, :1]), vectors.cumsum(1)], 1)
            t = torch.arange(1, width, device=device)
            lo = (t - TEXT_WINDOW).clamp(min=0)
            means = (csum[:, t] - csum[:, lo]) / (t - lo)[None, :, None]
            logits = torch.nn.functional.linear(means[real.to(device)], bank.text_weight, bank.text_bias).cpu()
            bins = logits.sub(HIST_LO).mul_(scale).clamp_(0, HIST_BINS - 1).long().add_(offsets)
            hist += torch.bincount(bins.reshape(-1), minlength=n * HIST_BINS)
    return hist.reshape(n, HIST_BINS)
