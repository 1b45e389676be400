"""Text analysis: a given text's tap states, words-only windows and records, one forward per batch.

`analyze_text` scores one text in one forward pass; `text_batches` feeds many texts in
right-padded batches (forwards that stop at the tap layer) and can also read the monitor's
behaviour read-outs from the same forward. Token t's record uses the state at t itself
(after reading t) and the words up to t. (Generation is `hatcat.batching`'s Scheduler, where token
k's record reads the state that produced token k.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import NamedTuple

import torch

from hatcat.monitor import Monitor, TokenRecord, window_means
from hatcat.tap import hidden_at, tap


@torch.inference_mode()
def analyze_text(model: torch.nn.Module, tokenizer, monitor: Monitor, text: str) -> list[TokenRecord]:
    """Records for every token of `text` from one forward pass up to the tap layer."""
    return monitor.score(*text_states(model, tokenizer, monitor, text))


def text_states(model: torch.nn.Module, tokenizer, monitor: Monitor, text: str) -> TextStates:
    """For every token of `text` (BOS skipped): tap states [T, d], words-only windows [T, d], token texts."""
    return next(text_batches(model, tokenizer, monitor, [text])).states[0][1]


# Texts per padded forward, and the most (padded) tokens one forward may hold: a 270M model's
# activations for 8k tokens stay near 0.5 GB at the tap layer.
ANALYZE_BATCH = 64
ANALYZE_BATCH_TOKENS = 8192


TextStates = tuple[torch.Tensor, torch.Tensor, list[str]]  # tap states [T, d], words-only windows [T, d], tokens


class TextBatch(NamedTuple):
    """One padded forward's texts: (index into the texts, states) each, and with `behaviours` asked,
    each text's behaviour read-outs (`Readouts.read_texts`) in the same order."""

    states: list[tuple[int, TextStates]]
    behaviours: list[dict[str, dict]] | None


@torch.inference_mode()
def text_batches(
    model: torch.nn.Module,
    tokenizer,
    monitor: Monitor,
    texts: list[str],
    batch_size: int = ANALYZE_BATCH,
    max_tokens: int = ANALYZE_BATCH_TOKENS,
    behaviours: bool = False,
) -> Iterator[TextBatch]:
    """Texts in right-padded batches of similar length, ONE forward per batch. Without `behaviours`
    it stops at the tap layer; with them (the monitor's read-outs) it runs to the final norm with a
    hook at the bank's block and at every read-out's block, and applies the output layer only at the
    positions the read-outs read (not [B, L, vocabulary] logits). Padding sits after each text, so a
    causal model's states for the real tokens do not see it."""
    readouts = monitor.readouts if behaviours else None
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
        if readouts is None:
            hidden = hidden_at(model, {"input_ids": ids, "attention_mask": mask}, [layer])[layer]
            found = None
        else:
            with ExitStack() as stack:
                taps = {b: stack.enter_context(tap(model, b)) for b in monitor.blocks}
                last = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            hidden = taps[layer].hidden
            lengths = [len(encoded[i]) for i in batch]
            found = readouts.read_texts(
                model.get_output_embeddings(), last, {b: t.hidden for b, t in taps.items()}, ids, lengths
            )
        states = []
        for row, i in enumerate(batch):
            n = len(encoded[i])
            first = 1 if bos is not None and n and encoded[i][0] == bos else 0
            own = ids[row, first:n]
            tokens = [tokenizer.decode([t]) for t in own.tolist()]
            states.append((i, (hidden[row, first:n], window_means(embed(own)), tokens)))
        yield TextBatch(states, found)


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
