"""Text analysis: a given text's tap states, words-only windows and records, from forwards that stop at the tap layer.

`analyze_text` scores one text in one forward pass; `batched_text_states` feeds many texts in
right-padded batches. Token t's record uses the state at t itself (after reading t) and the words
up to t. (Generation is `hatcat.batching`'s Scheduler, where token k's record reads the state that
produced token k.)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from hatcat.monitor import Monitor, TokenRecord, window_means
from hatcat.tap import hidden_at


@torch.inference_mode()
def analyze_text(model: torch.nn.Module, tokenizer, monitor: Monitor, text: str) -> list[TokenRecord]:
    """Records for every token of `text` from one forward pass up to the tap layer."""
    return monitor.score(*text_states(model, tokenizer, monitor, text))


def text_states(
    model: torch.nn.Module, tokenizer, monitor: Monitor, text: str
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """For every token of `text` (BOS skipped): tap states [T, d], words-only windows [T, d], token texts."""
    return next(iter(batched_text_states(model, tokenizer, monitor, [text])))[0][1]


# Texts per padded forward, and the most (padded) tokens one forward may hold: a 270M model's
# activations for 8k tokens stay near 0.5 GB at the tap layer.
ANALYZE_BATCH = 64
ANALYZE_BATCH_TOKENS = 8192


@torch.inference_mode()
def batched_text_states(
    model: torch.nn.Module,
    tokenizer,
    monitor: Monitor,
    texts: list[str],
    batch_size: int = ANALYZE_BATCH,
    max_tokens: int = ANALYZE_BATCH_TOKENS,
) -> Iterator[list[tuple[int, tuple[torch.Tensor, torch.Tensor, list[str]]]]]:
    """`text_states` for many texts in right-padded batches of similar length; yields one list
    per batch of (index into `texts`, states), from one forward per batch that stops at the tap layer. Padding sits after each text, so a causal model's states for
    the real tokens do not see it."""
    encoded = [tokenizer(t).input_ids for t in texts]
    device = monitor.bank.act_weight.device
    layer, embed, bos = monitor.bank.tap_layer, model.get_input_embeddings(), tokenizer.bos_token_id
    for batch in _length_batches([len(ids) for ids in encoded], batch_size, max_tokens):
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        ids, mask = ids.to(device), mask.to(device)
        hidden = hidden_at(model, {"input_ids": ids, "attention_mask": mask}, [layer])[layer]
        states = []
        for row, i in enumerate(batch):
            n = len(encoded[i])
            first = 1 if bos is not None and n and encoded[i][0] == bos else 0
            own = ids[row, first:n]
            tokens = [tokenizer.decode([t]) for t in own.tolist()]
            states.append((i, (hidden[row, first:n], window_means(embed(own)), tokens)))
        yield states


def _length_batches(lengths: list[int], batch_size: int, max_tokens: int) -> Iterator[list[int]]:
    """Indices grouped by ascending length, at most `batch_size` texts and `max_tokens` padded tokens each."""
    batch: list[int] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * lengths[i] > max_tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch
