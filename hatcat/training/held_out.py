"""A loaded probe's scores on its concept's held-out template prompts, for the workbench's
threshold tuning: the run's prompt generator and negatives rebuilt from the pack's manifest, the
prompts' token states from the training cache (one forward per prompt not cached yet), each
prompt pooled the way the pack was trained (`pooling` in the manifest)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from hatcat.concepts import ConceptPack
from hatcat.model import LoadedModel
from hatcat.probes import ProbeBank
from hatcat.training.run import TrainSettings, plan, pool
from hatcat.training.states import TokenStateCache, extract_states


def held_out_scores(
    loaded: LoadedModel,
    bank: ProbeBank,
    concepts: ConceptPack,
    concept: str,
    split: str,
    cache_dir: Path,
    guard: Callable[[], AbstractContextManager] = nullcontext,
) -> tuple[list[float], list[int]]:
    """(scores, labels: 1 positive, 0 negative) of `bank`'s probe for `concept` on its `split`
    prompts; `guard()` is held around each forward pass."""
    run = bank.pack.manifest.get("training", {})
    work = plan(
        concepts,
        TrainSettings(
            concepts=(concept,), n_hard=run.get("n_hard", 8), n_easy=run.get("n_easy", 8), seed=run.get("seed", 0)
        ),
    )
    texts, rows = work.split(split)
    index, labels = rows.labelled(0)
    cache = TokenStateCache(cache_dir, loaded.name, bank.tap_layer)
    chosen = [texts[i] for i in index]
    extract_states(loaded.model, loaded.tokenizer, chosen, cache, guard=guard)
    # one row per prompt: its last token, or the mean over the rows the pooling trained on
    pooled = torch.stack([pool(cache.get(t), bank.pooling).mean(0) for t in chosen])
    scores = bank.score(pooled.to(loaded.device))
    return scores[:, bank.index[concept]].tolist(), labels.astype(int).tolist()
