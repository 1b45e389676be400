"""POST /v1/chat/completions: OpenAI chat completions, every token monitored.

Streamed (`stream: true`): one SSE chunk per token whose `choices[0].delta.metadata` holds
`divergence` ({max_divergence, top_divergences}), `color` and `steering`; after the last
token a chunk whose content is the response-level analysis line ("**Analysis**: ...", as the
original sends it; `include_analysis: false` leaves the content empty) with the summary in
`metadata.analysis`; then the chunk with `finish_reason` and `usage`; then `data: [DONE]`.
A failure after the stream began is sent as `data: {"error": {...}}` followed by `[DONE]`.

Not streamed: the OpenAI answer plus an extra `hatcat` field with the same per-token data and
the analysis. Without a probe pack, chat still works and `monitoring` is false.

Concurrent requests decode together (continuous batching, `hatcat.batching`): a request joins
the running batch at the next step and leaves when it ends. Past `HATCAT_MAX_QUEUE` waiting
requests the answer is a 429. The first token (or the error that stopped the request) is
awaited before any byte is sent, so errors still get a proper status code. A client that
disconnects — while waiting or while reading — cancels its generation: its row leaves the
batch at the next step.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from jinja2 import TemplateError

from hatcat.api.auth import actor, session_key
from hatcat.api.errors import APIError, as_body, error_responses
from hatcat.api.openwebui_events import OpenWebUIEvents
from hatcat.api.protocol import MONITOR_MODEL_ID, ChatCompletion, ChatCompletionRequest
from hatcat.api.reports import divergence, steering_state, token_report
from hatcat.api.worker import ClientGone, Ended, Failed, Job, Started
from hatcat.engine import Engine
from hatcat.generation import Finished, GenerationSettings, TokenStep, build_prompt, encode_prompt
from hatcat.model import check_context
from hatcat.monitor import ResponseSummary, TokenRecord
from hatcat.pipeline import MonitoredFinish, MonitoredToken
from hatcat.steering import Steering
from hatcat.store.events import record_response

router = APIRouter(prefix="/v1")

DEFAULT_MAX_TOKENS = 512
MIN_TOP_P = 1e-9  # keeps only the most likely token, as any smaller top_p does


STREAM_RESPONSE = {
    200: {
        "description": "a chat.completion, or with `stream: true` SSE chat.completion.chunk events",
        # OpenAPI 3.1 reads an event stream's `schema` as the schema of one event
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "event": {"type": "string", "const": "message"},
                        "data": {
                            "type": "string",
                            "description": "a chat.completion.chunk as JSON, an error object "
                            '({"error": {...}}) when generation fails mid-stream, or [DONE] last',
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={**error_responses(400, 401, 404, 409, 429), **STREAM_RESPONSE},
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    engine: Engine = request.app.state.engine
    _check_model(engine, body.model)
    settings = _generation_settings(body, engine.settings.max_tokens)
    prompt = await run_in_threadpool(_prompt, engine, [m.model_dump(exclude_none=True) for m in body.messages])
    steerings = engine.steering.list(session_key(request, body.session_id))
    slots = request.app.state.streams
    slot = slots.take(request) if body.stream else None  # 429 past HATCAT_MAX_STREAMS open streams per key
    try:
        generation = engine.generate(prompt, settings, steerings)  # QueueFull: 429 before any byte is sent
    except BaseException:
        slots.give(slot)
        raise
    job = Job(engine, lambda: generation, exclusive=False)
    run = _Run(request, body, steerings, engine)
    first = None
    try:
        first = await run.first(job)
    except ClientGone:
        pass  # nobody is listening
    finally:
        if first is None:
            slots.give(slot)  # no stream will be sent: its slot is free again
    if first is None:
        return None
    if body.stream:
        return _EventStream(
            run.stream(job, first),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            on_close=lambda: slots.give(slot),
        )
    try:
        return await run.collect(job, first)
    except ClientGone:
        return None


def _check_model(engine: Engine, model: str) -> None:
    loaded = engine.probe_pack_id
    if model in (MONITOR_MODEL_ID, loaded):
        return
    packs = engine.probe_packs()
    if model in packs:
        raise APIError(
            409,
            f"probe pack {model} is installed but not loaded (loaded: {loaded or 'none'}); "
            "load it in the workbench or set HATCAT_PROBE_PACK",
            param="model",
            code="model_not_loaded",
        )
    known = ", ".join([MONITOR_MODEL_ID, *packs])
    raise APIError(404, f"unknown model: {model} (available: {known})", param="model", code="model_not_found")


def _generation_settings(body: ChatCompletionRequest, limit: int) -> GenerationSettings:
    max_tokens = body.max_tokens or body.max_completion_tokens or min(DEFAULT_MAX_TOKENS, limit)
    if max_tokens > limit:
        raise APIError(
            400,
            f"max_tokens {max_tokens} is above this server's limit of {limit} (HATCAT_MAX_TOKENS)",
            param="max_tokens",
            code="max_tokens_too_large",
        )
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return GenerationSettings(
        max_tokens=max_tokens,
        temperature=0.7 if body.temperature is None else body.temperature,
        # a top_p below float32's range would round to 0 in the sampler and keep no token at all
        top_p=1.0 if body.top_p is None else max(body.top_p, MIN_TOP_P),
        top_k=body.top_k,
        repetition_penalty=body.repetition_penalty,
        seed=body.seed,
        stop=stop,
    )


def _prompt(engine: Engine, messages: list[dict]) -> str:
    try:
        prompt = build_prompt(engine.tokenizer, messages)
    except (ValueError, TemplateError) as err:  # e.g. no user message; a template that wants alternating roles
        raise APIError(
            400, f"messages cannot be turned into a prompt: {err}", param="messages", code="invalid_messages"
        ) from None
    if not prompt.strip():
        raise APIError(400, "the prompt is empty: the user message has no text", param="messages", code="empty_prompt")
    check_context(engine.model, len(encode_prompt(engine.tokenizer, prompt)), "prompt", param="messages", room=1)
    return prompt


def _token(item: Any) -> tuple[str, TokenRecord | None] | None:
    if isinstance(item, MonitoredToken):
        return item.step.text, item.record
    if isinstance(item, TokenStep):
        return item.text, None
    return None


def _finish(item: Any) -> tuple[Finished, ResponseSummary | None] | None:
    if isinstance(item, MonitoredFinish):
        return item.finished, item.summary
    if isinstance(item, Finished):
        return item, None
    return None


def _analysis_line(summary: ResponseSummary) -> str:
    return "**" + summary.line().replace(":", "**:", 1)


class _Run:
    """One request's answer being put together from its job's items."""

    def __init__(
        self, request: Request, body: ChatCompletionRequest, steerings: list[Steering], engine: Engine
    ) -> None:
        self.request, self.body, self.engine = request, body, engine
        self.metrics = request.app.state.metrics
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.steering = steering_state(steerings, body.session_id)
        self.monitoring = engine.probe_pack_id is not None
        self.started = time.perf_counter()
        self.records: list[TokenRecord] = []
        self.openwebui = OpenWebUIEvents.requested(request) if body.stream else None

    async def first(self, job: Job) -> Any:
        """Wait for the turn, then the first token (or the error that stopped it)."""
        while True:
            item = await job.next_watching(self.request)
            if isinstance(item, Started):
                self.started = time.perf_counter()
                self.monitoring = self.engine.probe_pack_id is not None  # as of the turn (a pack may have been loaded)
                continue
            if isinstance(item, Failed):
                raise item.error
            if isinstance(item, Ended):
                raise APIError(503, "the generation was cancelled before it started", code="cancelled")
            return item

    def _observe(self, record: TokenRecord | None) -> None:
        if record is not None:
            self.metrics.divergence.observe(record.max_divergence)
            self.records.append(record)

    def _finished(self, finished: Finished) -> dict[str, int]:
        self.metrics.generation(finished.completion_tokens, time.perf_counter() - self.started)
        record_response(self.engine, self.records, self.id, actor(self.request))
        return {
            "prompt_tokens": finished.prompt_tokens,
            "completion_tokens": finished.completion_tokens,
            "total_tokens": finished.prompt_tokens + finished.completion_tokens,
        }

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None, usage: dict | None = None) -> str:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.body.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if usage is not None:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk)}\n\n"

    def _metadata(self, **extra: Any) -> dict[str, Any]:
        return {"monitoring": self.monitoring, "divergence": None, "steering": self.steering, **extra}

    async def stream(self, job: Job, item: Any) -> AsyncIterator[str]:
        first = True
        try:
            while True:
                if (token := _token(item)) is not None:
                    text, record = token
                    self._observe(record)
                    if self.openwebui is not None and record is not None:
                        self.openwebui.add(record)
                    extra = (
                        {"divergence": divergence(record), "color": record.colour, "token_index": record.index}
                        if record
                        else {}
                    )
                    delta = {"role": "assistant", "content": text} if first else {"content": text}
                    first = False
                    yield self._chunk({**delta, "metadata": self._metadata(**extra)})
                elif (end := _finish(item)) is not None:
                    finished, summary = end
                    usage = self._finished(finished)
                    if summary is not None:
                        line = _analysis_line(summary)
                        content = ("\n\n" + line) if self.body.include_analysis else ""
                        top = [
                            {"concept": c.concept, "tokens": c.tokens, "mean_divergence": c.mean_divergence}
                            for c in summary.top_concepts
                        ]
                        overall = {
                            "max_divergence": summary.max_divergence,
                            "mean_divergence": summary.mean_divergence,
                            "top_concepts": top,
                        }
                        yield self._chunk(
                            {
                                "content": content,
                                "metadata": self._metadata(
                                    divergence=overall, analysis=summary.to_dict(), analysis_line=line
                                ),
                            }
                        )
                    yield self._chunk({"metadata": self._metadata()}, finished.finish_reason, usage)
                    if self.openwebui is not None:
                        yield self.openwebui.lines(summary)
                    if self.body.stream_options and self.body.stream_options.include_usage:
                        chunk = {
                            "id": self.id,
                            "object": "chat.completion.chunk",
                            "created": self.created,
                            "model": self.body.model,
                            "choices": [],
                            "usage": usage,
                        }
                        yield f"data: {json.dumps(chunk)}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                elif isinstance(item, Failed):
                    yield f"data: {json.dumps(as_body(item.error))}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                elif isinstance(item, Ended):
                    return
                item = await job.next()
        finally:
            job.cancel()  # a no-op after the end; frees the model when the client went away

    async def collect(self, job: Job, item: Any) -> dict[str, Any]:
        tokens: list[dict[str, Any]] = []
        while True:
            if (token := _token(item)) is not None:
                record = token[1]
                self._observe(record)
                if record is not None:
                    tokens.append(token_report(record))
            elif (end := _finish(item)) is not None:
                finished, summary = end
                usage = self._finished(finished)
                break
            elif isinstance(item, Failed):
                raise item.error
            elif isinstance(item, Ended):
                raise APIError(503, "the generation was cancelled", code="cancelled")
            item = await job.next_watching(self.request)
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.body.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": finished.text},
                    "logprobs": None,
                    "finish_reason": finished.finish_reason,
                }
            ],
            "usage": usage,
            "hatcat": {
                "monitoring": self.monitoring,
                "probe_pack": self.engine.probe_pack_id if self.monitoring else None,
                "tokens": tokens,
                "analysis": summary.to_dict() if summary else None,
                "analysis_line": _analysis_line(summary) if summary else None,
                "steering": self.steering,
            },
        }


class _EventStream(StreamingResponse):
    """Closes its body iterator however the response ends, so the job is always cancelled, then
    gives its stream slot back."""

    def __init__(self, *args: Any, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()
            finally:
                self.on_close()
