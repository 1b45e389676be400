"""POST /v1/chat/completions: OpenAI chat completions, every token monitored.

What the stream and the answer hold: `hatcat.api.serving`, which does the work.

Concurrent requests decode together (continuous batching, `hatcat.batching`): a request joins
the running batch at the next step and leaves when it ends. Past `HATCAT_MAX_QUEUE` waiting
requests the answer is a 429. The first token (or the error that stopped the request) is
awaited before any byte is sent, so errors still get a proper status code. A client that
disconnects — while waiting or while reading — cancels its generation: its row leaves the
batch at the next step.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from hatcat.api.auth import session_key
from hatcat.api.errors import error_responses
from hatcat.api.protocol import ChatCompletion, ChatCompletionRequest
from hatcat.api.serving import ChatRun, EventStream, chat_request
from hatcat.api.worker import ClientGone

router = APIRouter(prefix="/v1")


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
    engine = request.app.state.engine
    prompt, settings, steerings = await run_in_threadpool(
        chat_request, engine, body, session_key(request, body.session_id)
    )
    slots = request.app.state.streams
    slot = slots.take(request) if body.stream else None  # 429 past HATCAT_MAX_STREAMS open streams per key
    first = None
    try:
        # QueueFull: 429 before any byte is sent
        run = ChatRun(request, body, steerings, engine, engine.generate(prompt, settings, steerings))
        first = await run.first()
    except ClientGone:
        pass  # nobody is listening
    finally:
        if first is None:
            slots.give(slot)  # no stream will be sent: its slot is free again
    if first is None:
        return None
    if body.stream:
        return EventStream(run.stream(first), on_close=lambda: slots.give(slot))
    try:
        return await run.collect(first)
    except ClientGone:
        return None
