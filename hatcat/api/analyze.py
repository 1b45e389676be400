"""POST /v1/analyze: monitor given texts instead of generating.

`text` (one text) is answered with one `analysis`; `input` (a text or a list of up to
`MAX_ANALYZE_TEXTS`, as OpenAI's embeddings) with a `list` of analyses in input order. The
texts are scored in padded batches by `Engine.analyze` (one forward per batch, which also
reads the behaviour read-outs; the probe bank scores all concepts on all tokens at once). Each analysis holds the
per-token records (as in the stream's metadata) and, per concept asked for (or the `top_k` with
the highest max divergence), the max, mean and last activation, words-only score and divergence;
`mean_activation` (the mean over the text's tokens, chosen on dev data) answers "is this text about X".
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from hatcat.api.errors import APIError, error_responses
from hatcat.api.protocol import Analysis, AnalysisList, AnalyzeRequest
from hatcat.api.worker import ClientGone, Ended, Failed, Job
from hatcat.engine import Engine

router = APIRouter(prefix="/v1")


@router.post("/analyze", response_model=Analysis | AnalysisList, responses=error_responses(400, 401, 404, 409))
async def analyze(body: AnalyzeRequest, request: Request) -> Any:
    engine: Engine = request.app.state.engine
    pack_id = engine.require_probes("analysis").probes.id
    texts = body.texts
    answers: list[dict[str, Any] | None] = [None] * len(texts)
    job = Job(lambda: engine.analyze(texts, body.concepts, body.top_k))
    try:
        while not isinstance(item := await job.next_watching(request), Ended):
            if isinstance(item, Failed):
                raise item.error
            index, document = item
            answers[index] = _answer(pack_id, document, None if body.text is not None else index)
    except ClientGone:
        return None
    if any(a is None for a in answers):
        raise APIError(503, "the analysis was cancelled", code="cancelled")
    if body.text is not None:
        return answers[0]
    n = sum(a["usage"]["prompt_tokens"] for a in answers)
    usage = {"prompt_tokens": n, "completion_tokens": 0, "total_tokens": n}
    return {"object": "list", "probe_pack": pack_id, "data": answers, "usage": usage}


def _answer(pack_id: str, document: dict[str, Any], index: int | None) -> dict[str, Any]:
    n = document["n_tokens"]
    answer = {
        "object": "analysis",
        "probe_pack": pack_id,
        "tokens": [r.to_dict() for r in document["records"]],
        "concepts": document["concepts"],
        "summary": document["summary"],
        "summary_line": document["summary_line"],
        "usage": {"prompt_tokens": n, "completion_tokens": 0, "total_tokens": n},
    }
    return answer if index is None else {**answer, "index": index}
