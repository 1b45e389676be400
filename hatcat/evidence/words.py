"""The words-only side on ordinary text: a histogram of every concept's words-only logit over the reference
corpus's dev windows, for the rank score's words surprisal (calibration.py). It needs only the model's input
embeddings (no forward pass), so it runs after a scan in a minute or two, not as part of it."""

from __future__ import annotations

import numpy as np
import torch

from hatcat.evidence import scan
from hatcat.evidence.scan import HIST_BINS, Windows
from hatcat.monitor import window_means
from hatcat.probes import ProbeBank

MAX_WINDOWS = 6000  # dev windows read (a fixed sample, ~750k tokens; all when fewer)


def histogram(
    embed: torch.nn.Module, bank: ProbeBank, windows: Windows, max_windows: int = MAX_WINDOWS, batch: int = 32
) -> torch.Tensor:
    """[N, BINS] words-only logits over a fixed sample of dev windows (tokens after BOS, the analysis's
    window of the most recent tokens, `hatcat.monitor.window_means`)."""
    dev = np.nonzero(windows.part < 2)[0]
    picked = np.sort(np.random.default_rng(0).permutation(dev)[:max_windows])
    hist = torch.zeros(len(bank), HIST_BINS, dtype=torch.int64)
    with torch.no_grad():
        for start in range(0, len(picked), batch):
            rows = picked[start : start + batch]
            width = int(windows.lengths[rows].max())
            ids = torch.from_numpy(windows.ids[rows, 1:width].astype(np.int64)).to(bank.text_weight.device)
            real = torch.arange(1, width)[None, :] < torch.from_numpy(windows.lengths[rows]).long()[:, None]
            means = window_means(embed(ids))  # [B, L, d]; padding sits after each window's real tokens
            logits = torch.nn.functional.linear(means[real.to(ids.device)], bank.text_weight, bank.text_bias)
            hist += scan.histogram(logits)
    return hist
