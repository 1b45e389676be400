"""Analysis of given texts instead of generating: one document per text, texts scored in padded batches.

The API (`POST /v1/analyze`), the Python API (`Engine.analyze`) and the CLI (`hatcat.analyze`) share
`analyses`. One forward per batch of similar-length texts stops at the tap layer (with behaviour
read-outs loaded, the same forward runs on, hooked at their blocks too, and reads them as well:
`hatcat.pipeline.text_batches`); the probe bank scores every concept on every token of the batch in one
matrix product per side. A document holds the per-token `TokenRecord`s, the response summary (top concepts
by the response-level rank score of hatcat/ranking.py, as a stream's final analysis) and, per concept asked
for (or the `top_k` with the highest max divergence), the max, mean and last activation, words-only score and
divergence. `mean_activation` (the mean over the text's tokens; chosen on dev data over
`last_activation`, the state after the whole text: results/recipe_compare.json) answers "is this
text about X"; max says where it fired most, `mean_divergence` is the response-level divergence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from hatcat.errors import InvalidValue, NotFound
from hatcat.model import check_context
from hatcat.monitor import Monitor, summarise
from hatcat.pipeline import ANALYZE_BATCH, text_batches
from hatcat.ranking import top2

STAT_NAMES = (
    "max_activation",
    "mean_activation",
    "last_activation",
    "max_text_similarity",
    "mean_text_similarity",
    "last_text_similarity",
    "max_divergence",
    "mean_divergence",
    "last_divergence",
)


def check_request(
    model: torch.nn.Module,
    tokenizer,
    monitor: Monitor,
    texts: list[str],
    concepts: list[str] | None,
    names: list[str] | None = None,
) -> None:
    """Refuse unknown concepts, empty texts and texts longer than the context, naming the first offender
    (`names[i]` for text i where given, e.g. a corpus row's id; else `text` or `input[i]`)."""
    unknown = [c for c in concepts or () if c not in monitor.bank.index]
    if unknown:
        raise NotFound(
            f"unknown concept: {', '.join(unknown[:5])} (the loaded probe pack has no probe for it)",
            param="concepts",
            code="concept_not_found",
        )
    for i, text in enumerate(texts):
        n = len(tokenizer(text).input_ids)
        where = names[i] if names else "text" if len(texts) == 1 else f"input[{i}]"
        if not text or n == 0:
            raise InvalidValue(f"{where} encodes to no tokens", param="input", code="empty_text")
        check_context(model, n, where, param="input")


def analyses(
    model: torch.nn.Module,
    tokenizer,
    monitor: Monitor,
    texts: list[str],
    concepts: list[str] | None = None,
    top_k: int = 10,
    batch_size: int = ANALYZE_BATCH,
    hold: Callable[[], AbstractContextManager] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index into `texts`, analysis document) for every text, batch by batch (batch order).

    `hold()` (e.g. `Engine.exclusive`) is entered around each batch's model work, so other
    work on the model interleaves between batches."""
    batches = text_batches(
        model, tokenizer, monitor, texts, batch_size=batch_size, behaviours=monitor.readouts is not None
    )
    while True:
        with hold() if hold is not None else nullcontext():
            batch = next(batches, None)
            if batch is None:
                return
            documents = _documents(monitor, [states for _, states in batch.states], concepts, top_k)
            for document, behaviours in zip(documents, batch.behaviours or [None] * len(documents), strict=True):
                if behaviours is not None:  # the behaviour read-outs, from the same forward
                    document["summary"]["behaviours"] = {**document["summary"].get("behaviours", {}), **behaviours}
        yield from zip([i for i, _ in batch.states], documents)


@torch.inference_mode()
def _documents(
    monitor: Monitor,
    states: list[tuple[torch.Tensor, torch.Tensor, list[str]]],
    concepts: list[str] | None,
    top_k: int,
) -> list[dict[str, Any]]:
    """Documents for a batch of texts: every concept on every token of the batch in one matrix
    product per side and one monitor pass; per-text statistics over a padded [texts, tokens, N] view."""
    bank = monitor.bank
    act, text, div = bank.scores(
        torch.cat([hidden for hidden, _, _ in states]), torch.cat([windows for _, windows, _ in states])
    )  # [sum T, N] each
    tokens = [t for _, _, own in states for t in own]
    lengths = [len(own) for _, _, own in states]
    rank = bank.rank_score(act, text)
    records = monitor.records(act, text, div, tokens, [t for n in lengths for t in range(n)], rank)
    padded = pad_sequence(rank.split(lengths), batch_first=True, padding_value=float("-inf"))
    ranked = monitor.top_concepts(top2(padded))  # the response-level ranking, as a stream's summary
    stats = _per_text_stats(act, text, div, lengths)  # [texts, 9, N]
    behaviour = stats[:, STAT_NAMES.index("mean_activation")][:, monitor.behaviour_rows]  # [texts, R]
    if concepts:
        chosen = torch.tensor([bank.index[c] for c in concepts], device=act.device).expand(len(lengths), -1)
    else:
        chosen = stats[:, STAT_NAMES.index("max_divergence")].topk(min(top_k, act.shape[1]), dim=1).indices
    picked = stats.gather(2, chosen[:, None, :].expand(-1, len(STAT_NAMES), -1)).transpose(1, 2)  # [texts, k, 9]
    documents, start = [], 0
    for n, rows, ids, top, means in zip(lengths, picked.cpu().tolist(), chosen.cpu().tolist(), ranked, behaviour):
        own = records[start : start + n]
        start += n
        summary = summarise(own, top)
        if monitor.behaviour_names:  # the behaviour rows (`Deception`): not concepts, reported as behaviours
            summary = replace(summary, behaviours=monitor.row_behaviours(means))
        documents.append(
            {
                "records": own,
                "concepts": [
                    {
                        "concept": bank.concepts[i],
                        "layer": monitor.layer_of[i],
                        **{name: round(v, 6) for name, v in zip(STAT_NAMES, row)},
                    }
                    for i, row in zip(ids, rows)
                ],
                "summary": summary.to_dict(),
                "summary_line": summary.line(),
                "n_tokens": n,
            }
        )
    return documents


def _per_text_stats(act: torch.Tensor, text: torch.Tensor, div: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Max, mean and last (the state after the whole text) over each text's tokens of activation,
    words-only score and divergence, in `STAT_NAMES` order: [texts, 9, N], from tokens of all texts
    laid end to end ([sum T, N] each)."""
    real = torch.zeros(len(lengths), max(lengths), 1, dtype=torch.bool, device=act.device)
    for i, n in enumerate(lengths):
        real[i, :n] = True
    out = []
    last = torch.tensor(lengths, device=act.device).cumsum(0) - 1  # each text's last token
    for values in (act, text, div):
        padded = pad_sequence(values.split(lengths), batch_first=True)  # [texts, Tmax, N], zeros after each text
        out.append(padded.masked_fill(~real, float("-inf")).amax(1))
        out.append(padded.sum(1) / torch.tensor(lengths, device=act.device, dtype=values.dtype)[:, None])
        out.append(values[last])
    return torch.stack(out, dim=1)


# ---- CLI -------------------------------------------------------------------------------------
