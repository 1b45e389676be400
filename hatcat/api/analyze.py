"""POST /v1/analyze: monitor a given text instead of generating.

One forward pass up to the tap layer gives every token's state; the probe bank scores all
concepts on all tokens at once. The answer holds the per-token records (as in the stream's
metadata) and, per concept asked for (or the `top_k` with the highest max divergence), the max
and mean activation, words-only score and divergence over the text.
"""

from __future__ import annotations

from typing import Any

import torch
from fastapi import APIRouter, Request

from hatcat.api.errors import APIError, error_responses
from hatcat.api.protocol import Analysis, AnalyzeRequest
from hatcat.api.reports import require_monitor, token_report
from hatcat.api.worker import ClientGone, Ended, Failed, Job, Started
from hatcat.engine import Engine
from hatcat.model import check_context
from hatcat.monitor import summarise
from hatcat.pipeline import text_states

router = APIRouter(prefix="/v1")


@router.post("/analyze", response_model=Analysis, responses=error_responses(400, 401, 404, 409))
async def analyze(body: AnalyzeRequest, request: Request) -> Any:
    engine: Engine = request.app.state.engine
    require_monitor(engine, "analysis")
    unknown = [c for c in body.concepts or () if c not in engine.bank.index]
    if unknown:
        raise APIError(
            404,
            f"unknown concept: {', '.join(unknown[:5])} (the loaded probe pack has no probe for it)",
            param="concepts",
            code="concept_not_found",
        )
    job = Job(engine, lambda: iter([_analyze(engine, body)]))
    try:
        while isinstance(item := await job.next_watching(request), Started):
            pass
    except ClientGone:
        return None
    if isinstance(item, Failed):
        raise item.error
    if isinstance(item, Ended):
        raise APIError(503, "the analysis was cancelled", code="cancelled")
    return item


def _analyze(engine: Engine, body: AnalyzeRequest) -> dict[str, Any]:
    """Runs in the job's thread, holding the model."""
    monitor, bank = engine.monitor, engine.bank
    if monitor is None:  # unloaded between the check and the turn
        raise APIError(409, "analysis needs a probe pack and none is loaded", code="no_probe_pack")
    check_context(engine.model, len(engine.tokenizer(body.text).input_ids), "text", param="text")
    hidden, windows, tokens = text_states(engine.model, engine.tokenizer, monitor, body.text)
    if not tokens:
        raise APIError(400, "text encodes to no tokens", param="text", code="empty_text")
    records = monitor.score(hidden, windows, tokens)
    with torch.inference_mode():
        act, text = bank.score(hidden), bank.score_text(windows)  # [T, N] each
        div = act - text
        if body.concepts:
            chosen = torch.tensor([bank.index[c] for c in body.concepts], device=act.device)
        else:
            chosen = div.max(0).values.topk(min(body.top_k, div.shape[1])).indices
        stats = (
            torch.stack(
                [
                    act.max(0).values,
                    act.mean(0),
                    text.max(0).values,
                    text.mean(0),
                    div.max(0).values,
                    div.mean(0),
                ]
            )[:, chosen]
            .T.cpu()
            .tolist()
        )
    names = (
        "max_activation",
        "mean_activation",
        "max_text_similarity",
        "mean_text_similarity",
        "max_divergence",
        "mean_divergence",
    )
    concepts = [
        {
            "concept": bank.concepts[i],
            "layer": engine.concepts[bank.concepts[i]].layer,
            **{n: round(v, 4) for n, v in zip(names, row)},
        }
        for i, row in zip(chosen.tolist(), stats)
    ]
    summary = summarise(records)
    return {
        "object": "analysis",
        "probe_pack": engine.probes.id,
        "tokens": [token_report(r) for r in records],
        "concepts": concepts,
        "summary": summary.to_dict(),
        "summary_line": summary.line(),
        "usage": {"prompt_tokens": len(tokens), "completion_tokens": 0, "total_tokens": len(tokens)},
    }
