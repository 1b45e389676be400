"""Token-level training states: every token's tap-layer state of a text, cached on disk.

The signal-validity recipe (hatcat/training/recipe.py) reads states the way the monitor does:
per token, not only at a prompt's last position. `TokenStateCache` keeps, per text, the states
of all its tokens after BOS (float16), in safetensors shards keyed by model, tap layer and text,
so an interrupted run resumes where it stopped; the deception study keeps its items' statement
states in it too. `words_windows` gives the matching words-only
features (the monitor's window of mean input embeddings), cheap enough never to cache.
`continuations` asks the model to write about a concept: texts that imply it in the model's
own words, re-encoded later without the prompt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from contextlib import nullcontext
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


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:20]


class TokenStateCache:
    """{key: [T, d] float16 token states} for one model and tap layer: the one on-disk cache of
    hidden states. A text's key is `text_key(text)` and its states are those of its tokens after
    BOS (`extract_states`); other inputs (the deception study's items) bring their own key and states.

    Shards live under `<root>/token_states/<model slug>/layer<L>/`: a shard's tensor `states` holds
    its inputs' rows one after another, its `.json` (written after it) the keys and row counts, so a
    killed run keeps every finished shard and ignores one without its key list."""

    def __init__(self, root: Path, model_id: str, layer: int) -> None:
        self.layer = layer
        self.folder = Path(root) / "token_states" / model_slug(model_id) / f"layer{layer}"
        self.rows: dict[str, torch.Tensor] = {}
        for shard in sorted(self.folder.glob("shard-*.safetensors")):
            if shard.with_suffix(".json").is_file():
                self._index(json.loads(shard.with_suffix(".json").read_text()), load_file(shard)["states"])

    def _index(self, meta: dict[str, list], states: torch.Tensor) -> None:
        ends = np.cumsum(meta["lengths"])
        self.rows.update((key, states[end - n : end]) for key, end, n in zip(meta["keys"], ends, meta["lengths"]))

    def missing(self, things: list[Any], key: Callable[[Any], str] = text_key) -> list[Any]:
        """The inputs not cached yet, each once, in order."""
        return list({key(t): t for t in things if key(t) not in self.rows}.values())

    def add(self, things: list[Any], states: list[torch.Tensor], key: Callable[[Any], str] = text_key) -> None:
        """Store one computed chunk (written to disk at once: a killed run keeps it)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = {"keys": [key(t) for t in things], "lengths": [len(s) for s in states]}
        stacked = torch.cat(states).half().contiguous()
        shard = self.folder / f"shard-{text_key(''.join(meta['keys']))}.safetensors"  # concurrent runs never collide
        save_file({"states": stacked}, shard)
        shard.with_suffix(".json").write_text(json.dumps(meta))
        self._index(meta, stacked)

    def get(self, text: str) -> torch.Tensor:
        """A cached text's token states, float32."""
        return self.rows[text_key(text)].float()


@torch.no_grad()
def extract_states(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    cache: TokenStateCache,
    batch_size: int = 32,
    chunk: int = 256,
    progress=None,
    guard=nullcontext,
) -> None:
    """Compute and cache every missing text's token states; `progress(done, total)` after each chunk.

    `guard()` is entered around each batch's forward pass (a server that trains in the background
    passes its model lock, so requests interleave with training batches)."""
    todo = sorted(cache.missing(texts), key=len)  # similar lengths pad less
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    with tqdm(total=len(todo), desc=f"token states @ layer {cache.layer}", unit="text", disable=not todo) as bar:
        for start in range(0, len(todo), chunk):
            part, states = todo[start : start + chunk], []
            for b in range(0, len(part), batch_size):
                batch = tokenizer(part[b : b + batch_size], return_tensors="pt", padding=True).to(device)
                with guard():
                    hidden = hidden_at(model, dict(batch), [cache.layer])[cache.layer]
                for row, mask, ids in zip(hidden, batch["attention_mask"].bool(), batch["input_ids"]):
                    keep = mask & (ids != tokenizer.bos_token_id) if tokenizer.bos_token_id is not None else mask
                    states.append(row[keep].half().cpu())
            cache.add(part, states)
            bar.update(len(part))
            if progress is not None:
                progress(start + len(part), len(todo))


@torch.no_grad()
def words_windows(model: nn.Module, tokenizer: PreTrainedTokenizerBase, text: str) -> torch.Tensor:
    """The words-only features the monitor reads at each token of `text` (BOS skipped): [T, d]."""
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if tokenizer.bos_token_id is not None:
        ids = ids[ids != tokenizer.bos_token_id]
    embed = model.get_input_embeddings()
    return window_means(embed(ids.to(embed.weight.device))).float().cpu()


@torch.no_grad()
def continuations(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int = 32,
    batch_size: int = 48,
    seed: int = 0,
) -> list[str]:
    """The model's own continuation of each prompt (sampled, temperature 0.8), prompt removed."""
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True).to(device)
        generated = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=0.8,
            top_p=0.95,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = generated[:, batch["input_ids"].shape[1] :]
        out += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return out
