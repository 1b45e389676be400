"""Pooled tap-layer states of whole texts, for probe training on other machines
(`python -m hatcat.corpus extract`): per text its last token's state and the mean over its
tokens, computed in padded batches that stop at the tap layer (`hatcat.tap.hidden_at`: no later
layer, no logits). Runs that cache states keep every token's (`hatcat.training.states`).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from hatcat.tap import hidden_at

POOLINGS = ("last", "mean")


@torch.no_grad()
def pooled_activations(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    layers: list[int],
    batch_size: int = 64,
) -> dict[int, dict[str, torch.Tensor]]:
    """{layer: {pooling: [len(texts), hidden]}}: `last` and `mean` pooled states, float16 on the CPU."""
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"  # the last position is then every prompt's last token
    size = (len(texts), model.config.get_text_config().hidden_size)
    out = {layer: {pool: torch.empty(size, dtype=torch.float16) for pool in POOLINGS} for layer in layers}
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        batch = tokenizer([texts[i] for i in index], return_tensors="pt", padding=True).to(device)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        for layer, hidden in hidden_at(model, dict(batch), layers).items():
            hidden = hidden.float()
            out[layer]["last"][index] = hidden[:, -1].half().cpu()
            out[layer]["mean"][index] = ((hidden * mask).sum(1) / mask.sum(1)).half().cpu()
    return out
