"""Tap: read (or edit) the residual stream at one decoder layer through a forward hook.

The hook is attached inside a context manager and removed in `finally`, so an exception in
the middle of a generation never leaves a hook behind on the shared model.

    with tap(model, layer=12) as t:
        model(**inputs)
    t.hidden  # [batch, seq, hidden] output of decoder block 12

`hidden_at(model, inputs, layers)` runs the model only up to the deepest block asked for (no
later layers, no logits), for probe training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from hatcat.model import decoder_layers

Edit = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Tap:
    """What a tap saw on the last forward pass through its layer."""

    layer: int
    hidden: torch.Tensor | None = None


class _StopForward(Exception):
    """Raised from a hook to end a forward pass once the tap layer has run."""


@contextmanager
def tap(model: nn.Module, layer: int, edit: Edit | None = None, stop: bool = False) -> Iterator[Tap]:
    """Capture decoder block `layer`'s output; `edit` may replace it (steering); `stop` ends the pass there."""
    blocks = decoder_layers(model)
    if not -len(blocks) <= layer < len(blocks):
        raise ValueError(f"tap layer {layer} is out of range: the model has {len(blocks)} decoder layers")
    seen = Tap(layer % len(blocks))

    def hook(_module: nn.Module, _args: tuple, output: torch.Tensor | tuple) -> torch.Tensor | tuple | None:
        hidden = output[0] if isinstance(output, tuple) else output
        if edit is not None:
            hidden = edit(hidden)
        seen.hidden = hidden.detach()
        if stop:
            raise _StopForward
        if edit is None:
            return None
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = blocks[layer].register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@torch.no_grad()
def hidden_at(model: nn.Module, inputs: dict[str, torch.Tensor], layers: list[int]) -> dict[int, torch.Tensor]:
    """Decoder blocks' outputs for a batch, computing no layer after the last one asked: {layer: [batch, seq, hidden]}."""
    deepest = max(layers)
    with ExitStack() as stack:
        seen = [stack.enter_context(tap(model, layer, stop=layer == deepest)) for layer in layers]
        try:
            model(**inputs, use_cache=False)
        except _StopForward:
            pass
    assert all(t.hidden is not None for t in seen), "a tap layer did not run"
    return {t.layer: t.hidden for t in seen}
