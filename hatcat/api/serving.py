"""The chat completion serving layer (vLLM's `serving_chat` to `chat.py`'s route): a request becomes
an `Engine.generate` generation, and its events become OpenAI chunks or one OpenAI answer.

Streamed (`stream: true`): one SSE chunk per token whose `choices[0].delta.metadata` holds
`divergence` ({max_divergence, top_divergences}), `color`, `token_index` and `steering`; after the
last token a chunk whose content is the response-level analysis line ("**Analysis**: ...", as the
original sends it; `include_analysis: false` leaves the content empty) with the summary in
`metadata.analysis`; then the chunk with `finish_reason` and `usage`; then `data: [DONE]`. A failure
after the stream began is sent as `data: {"error": {...}}` followed by `[DONE]`. Not streamed: the
OpenAI answer plus a `hatcat` field with the same per-token data and the analysis. Without a probe
pack, chat still works and `monitoring` is false. A request with `X-HatCat-OpenWebUI-Events: 1`
also gets the OpenWebUI event lines (`openwebui_events`) after the finish chunk.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from hatcat.api.auth import actor
from hatcat.api.errors import APIError, as_body
from hatcat.api.openwebui_events import OpenWebUIEvents
from hatcat.api.prompt import chat_prompt
from hatcat.api.protocol import (
    MONITOR_MODEL_ID,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    ChunkDelta,
    ChunkMetadata,
    Usage,
)
from hatcat.api.reports import steering_state
from hatcat.api.worker import Ended, Failed, Job
from hatcat.batching import Generation
from hatcat.engine import Engine
from hatcat.generation import Finished, GenerationSettings, MonitoredFinish, MonitoredToken
from hatcat.monitor import ResponseSummary, TokenRecord
from hatcat.steering import Steering

MIN_TOP_P = 1e-9  # keeps only the most likely token, as any smaller top_p does


def check_model(engine: Engine, model: str) -> None:
    """`hatcat-divergence` and the loaded probe pack's id are served; another installed pack is a 409."""
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


def generation_settings(body: ChatCompletionRequest, limit: int, default: int) -> GenerationSettings:
    """`default`: the answer length when the request names none (HATCAT_DEFAULT_MAX_TOKENS; OpenWebUI sends none)."""
    max_tokens = body.max_tokens or body.max_completion_tokens or min(default, limit)
    if max_tokens > limit:
        raise APIError(
            400,
            f"max_tokens {max_tokens} is above this server's limit of {limit} (HATCAT_MAX_TOKENS)",
            param="max_tokens",
            code="max_tokens_too_large",
        )
    return GenerationSettings(
        max_tokens=max_tokens,
        temperature=0.7 if body.temperature is None else body.temperature,
        # a top_p below float32's range would round to 0 in the sampler and keep no token at all
        top_p=1.0 if body.top_p is None else max(body.top_p, MIN_TOP_P),
        top_k=body.top_k,
        repetition_penalty=body.repetition_penalty,
        seed=body.seed,
        min_tokens=body.min_tokens,
        stop=(body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ()),
    )


def chat_request(
    engine: Engine, body: ChatCompletionRequest, session: str
) -> tuple[str, GenerationSettings, list[Steering]]:
    """Check a chat request and turn it into the engine's arguments (tokenizes: run it off the event loop)."""
    check_model(engine, body.model)
    settings = generation_settings(body, engine.settings.max_tokens, engine.settings.default_max_tokens)
    prompt = chat_prompt(engine, [m.model_dump(exclude_none=True) for m in body.messages])
    return prompt, settings, engine.steering.list(session)


def analysis_line(summary: ResponseSummary) -> str:
    return "**" + summary.line().replace(":", "**:", 1)


class ChatRun:
    """One request's answer, put together from its generation's events."""

    def __init__(
        self,
        request: Request,
        body: ChatCompletionRequest,
        steerings: list[Steering],
        engine: Engine,
        generation: Generation,
    ) -> None:
        self.request, self.body, self.engine = request, body, engine
        self.job = Job(lambda: generation)
        self.metrics = request.app.state.metrics
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.steering = steering_state(steerings, body.session_id)
        self.monitoring = generation.monitored
        self.probe_pack = engine.probe_pack_id if self.monitoring else None
        self.started = time.perf_counter()
        self.records: list[TokenRecord] = []
        self.openwebui = OpenWebUIEvents.requested(request) if body.stream else None

    async def first(self) -> MonitoredToken | MonitoredFinish:
        """The first event (or the error that stopped the request)."""
        item = await self.job.next_watching(self.request)
        if isinstance(item, Failed):
            raise item.error
        if isinstance(item, Ended):
            raise APIError(503, "the generation was cancelled before it started", code="cancelled")
        return item

    def _observe(self, record: TokenRecord | None) -> None:
        if record is not None:
            self.metrics.divergence.observe(record.max_divergence)
            self.records.append(record)

    def _usage(self, finished: Finished) -> Usage:
        self.metrics.generation(finished.completion_tokens, time.perf_counter() - self.started)
        total = finished.prompt_tokens + finished.completion_tokens
        return Usage(
            prompt_tokens=finished.prompt_tokens, completion_tokens=finished.completion_tokens, total_tokens=total
        )

    async def _record(self) -> None:
        """The response's divergence events into the record store, off the event loop."""
        await run_in_threadpool(self.engine.record_response, self.records, self.id, actor(self.request))

    def _chunk(self, delta: ChunkDelta | None, finish_reason: str | None = None, usage: Usage | None = None) -> str:
        choices = (
            [] if delta is None else [ChunkChoice(index=0, delta=delta, logprobs=None, finish_reason=finish_reason)]
        )
        extra = {} if usage is None else {"usage": usage}
        return ChatCompletionChunk(
            id=self.id,
            object="chat.completion.chunk",
            created=self.created,
            model=self.body.model,
            choices=choices,
            **extra,
        ).sse()

    def _metadata(self, **extra: Any) -> ChunkMetadata:
        return ChunkMetadata(**{"monitoring": self.monitoring, "divergence": None, "steering": self.steering, **extra})

    def _token_chunk(self, event: MonitoredToken, first: bool) -> str:
        record, extra = event.record, {}
        self._observe(record)
        if record is not None:
            report = record.to_dict()
            if self.openwebui is not None:
                self.openwebui.records.append(report)
            extra = {"divergence": report["divergence"], "color": report["color"], "token_index": report["index"]}
        role = {"role": "assistant"} if first else {}
        return self._chunk(ChunkDelta(**role, content=event.step.text, metadata=self._metadata(**extra)))

    def _finish_chunks(self, event: MonitoredFinish) -> list[str]:
        usage, summary = self._usage(event.finished), event.summary
        chunks = []
        if summary is not None:
            line = analysis_line(summary)
            overall = {k: v for k, v in summary.to_dict().items() if k != "tokens"}  # max, mean, top concepts
            metadata = self._metadata(divergence=overall, analysis=summary.to_dict(), analysis_line=line)
            content = "\n\n" + line if self.body.include_analysis else ""
            chunks.append(self._chunk(ChunkDelta(content=content, metadata=metadata)))
        chunks.append(self._chunk(ChunkDelta(metadata=self._metadata()), event.finished.finish_reason, usage))
        if self.openwebui is not None:
            chunks.append(self.openwebui.lines(summary))
        if self.body.stream_options and self.body.stream_options.include_usage:
            chunks.append(self._chunk(None, usage=usage))
        return chunks

    async def stream(self, item: Any) -> AsyncIterator[str]:
        first = True
        try:
            while True:
                if isinstance(item, MonitoredToken):
                    yield self._token_chunk(item, first)
                    first = False
                elif isinstance(item, MonitoredFinish):
                    await self._record()
                    for chunk in self._finish_chunks(item):
                        yield chunk
                    yield "data: [DONE]\n\n"
                    return
                elif isinstance(item, Failed):
                    yield f"data: {json.dumps(as_body(item.error))}\n\n"
                    yield "data: [DONE]\n\n"
                    return
                elif isinstance(item, Ended):
                    return
                item = await self.job.next()
        finally:
            self.job.cancel()  # a no-op after the end; the row leaves the batch when the client went away

    async def collect(self, item: Any) -> ChatCompletion:
        tokens: list[dict[str, Any]] = []
        while not isinstance(item, MonitoredFinish):
            if isinstance(item, MonitoredToken):
                self._observe(item.record)
                if item.record is not None:
                    tokens.append(item.record.to_dict())
            elif isinstance(item, Failed):
                raise item.error
            elif isinstance(item, Ended):
                raise APIError(503, "the generation was cancelled", code="cancelled")
            item = await self.job.next_watching(self.request)
        finished, summary = item.finished, item.summary
        await self._record()
        return ChatCompletion.model_validate(
            {
                "id": self.id,
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
                "usage": self._usage(finished),
                "hatcat": {
                    "monitoring": self.monitoring,
                    "probe_pack": self.probe_pack,
                    "tokens": tokens,
                    "analysis": summary.to_dict() if summary else None,
                    "analysis_line": analysis_line(summary) if summary else None,
                    "steering": self.steering,
                },
            }
        )


class EventStream(StreamingResponse):
    """SSE that closes its body iterator however the response ends, so the generation is always
    cancelled, then calls `on_close` (gives the stream slot back)."""

    def __init__(self, body: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(
            body, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()
            finally:
                self.on_close()
