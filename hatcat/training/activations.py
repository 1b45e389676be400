"""Features for probe training: tap-layer activations (cached on disk) and words-only embeddings.

Activations are computed in padded batches that stop at the tap layer (`hatcat.tap.hidden_at`:
no later layer, no logits) and are pooled two ways, `last` (the final token's state) and
`mean` (over the real tokens). Every finished chunk is written to a cache keyed by model,
tap layer and prompt text, so a rerun or a resumed run recomputes nothing, and a prompt
shared by two concepts is computed once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from hatcat.monitor import window_means
from hatcat.paths import model_slug
from hatcat.tap import hidden_at

POOLINGS = ("last", "mean")


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:20]


class ShardCache:
    """Tensors per input (a prompt text, a deception item) for one model and tap layer, stored as
    safetensors shards under `<root>/<kind>/<model slug>/layer<L>/`.

    A shard is written whole, then its key list (`.json`) beside it: a killed run keeps every finished
    shard and ignores a shard without its key list. Each input owns one row of every tensor, or with
    `lengths` a run of rows (its tokens). Subclasses name the `kind`, how an input is keyed, and
    (`single`) the one tensor an entry holds, if `rows[key]` is that tensor rather than a dict."""

    kind = "cache"
    single: str | None = None

    def __init__(self, root: Path, model_id: str, layer: int) -> None:
        self.layer = layer
        self.folder = Path(root) / self.kind / model_slug(model_id) / f"layer{layer}"
        self.rows: dict[str, dict[str, torch.Tensor]] = {}
        for shard in sorted(self.folder.glob("shard-*.safetensors")):
            if shard.with_suffix(".json").is_file():
                self._index(json.loads(shard.with_suffix(".json").read_text()), load_file(shard))

    @staticmethod
    def key(thing: Any) -> str:
        return text_key(thing)

    def _index(self, meta: list[str] | dict[str, list], tensors: dict[str, torch.Tensor]) -> None:
        if isinstance(meta, list):  # one row per key
            spans = [(key, i) for i, key in enumerate(meta)]
        else:
            ends = np.cumsum(meta["lengths"])
            spans = [(key, slice(end - n, end)) for key, end, n in zip(meta["keys"], ends, meta["lengths"])]
        for key, span in spans:
            self.rows[key] = tensors[self.single][span] if self.single else {n: t[span] for n, t in tensors.items()}

    def missing(self, things: list[Any]) -> list[Any]:
        """The inputs not cached yet, each once, in order."""
        return list({self.key(t): t for t in things if self.key(t) not in self.rows}.values())

    def add(self, things: list[Any], tensors: dict[str, torch.Tensor], lengths: list[int] | None = None) -> None:
        """Store one computed chunk (written to disk at once: a killed run keeps it)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        keys = [self.key(t) for t in things]
        shard = self.folder / f"shard-{text_key(''.join(keys))}.safetensors"  # unique: concurrent runs never collide
        save_file({name: t.contiguous() for name, t in tensors.items()}, shard)
        meta = keys if lengths is None else {"keys": keys, "lengths": lengths}
        shard.with_suffix(".json").write_text(json.dumps(meta))
        self._index(meta, tensors)


class ActivationCache(ShardCache):
    """Pooled tap-layer states per prompt text: one row per text for each pooling."""

    kind = "activations"

    def stack(self, texts: list[str], pooling: str) -> torch.Tensor:
        return torch.stack([self.rows[text_key(t)][pooling] for t in texts]).float()


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


def extract(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    caches: list[ActivationCache],
    chunk: int = 2048,
    batch_size: int = 64,
) -> None:
    """Fill each layer's cache with every text it lacks, in one pass per chunk, with a progress bar and ETA."""
    todo = list(dict.fromkeys(t for cache in caches for t in cache.missing(texts)))
    layers = [cache.layer for cache in caches]
    with tqdm(total=len(todo), desc=f"activations @ layers {layers}", unit="prompt", disable=not todo) as bar:
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            pooled = pooled_activations(model, tokenizer, part, layers, batch_size)
            for cache in caches:
                cache.add(part, pooled[cache.layer])
            bar.update(len(part))


@torch.no_grad()
def text_features(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int = 256
) -> torch.Tensor:
    """Words-only features: the mean input embedding of each text's tokens (no context, no layers)."""
    embed = model.get_input_embeddings()
    device = embed.weight.device
    rows = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(device)
        vectors = embed(batch["input_ids"]).float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        rows.append(((vectors * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu())
    return torch.cat(rows)


@torch.no_grad()
def inner_token_features(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str], layer: int, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Background rows: at every position inside each text (after BOS, before its last token), the
    tap-layer state and the words-only window the monitor would read there. Probes are fitted on
    whole prompts (last token) but read mid-sentence states while a model writes; these rows
    teach them what an ordinary mid-sentence state looks like. Returns (hidden, words), float32 on the CPU."""
    embed = model.get_input_embeddings()
    device = embed.weight.device
    tokenizer.padding_side = "left"
    hidden_rows, word_rows = [], []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True).to(device)
        hidden = hidden_at(model, dict(batch), [layer])[layer].float()
        vectors = embed(batch["input_ids"]).float()
        for i, mask in enumerate(batch["attention_mask"].bool()):
            h, e = hidden[i][mask], vectors[i][mask]
            hidden_rows.append(h[1:-1].cpu())
            word_rows.append(window_means(e[1:])[:-1].cpu())
    return torch.cat(hidden_rows), torch.cat(word_rows)
