"""
title: HatCat analyze
author: HatCat
version: 0.1.0
description: Re-scores a message with HatCat's /v1/analyze and shows where it diverges.
"""

# An OpenWebUI Action function: a button under each message. It gets the message's text only,
# so it asks HatCat's `/v1/analyze` to monitor that text in one forward pass and returns the
# same compact embed the divergence filter draws after streaming (one renderer, inlined by the installer).

import httpx
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from hatcat.openwebui.passages import compact_embed  # inlined by the installer

ANALYSIS_MARK = "\n\n**Analysis**:"  # the summary line HatCat appends to a streamed answer


def message_text(body: dict) -> str:
    """The text of the message the button was pressed on (the last assistant message if unnamed)."""
    messages = body.get("messages") or []
    chosen = next((m for m in messages if m.get("id") == body.get("id")), None)
    if chosen is None:
        chosen = next((m for m in reversed(messages) if m.get("role") == "assistant"), None)
    content = (chosen or {}).get("content") or ""
    if isinstance(content, list):  # OpenAI content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content.split(ANALYSIS_MARK, 1)[0]


class Action:
    class Valves(BaseModel):
        hatcat_url: str = Field("http://127.0.0.1:8765", description="HatCat server (without /v1)")
        api_key: str = Field("", description="HATCAT_API_KEY of that server, if it has one")
        full_colour_at: float = Field(
            1.0, gt=0, description="divergence shown at full red (and its negative at full blue)"
        )
        passage_at: float = Field(
            0.5, ge=0, le=1, description="share of full colour a token needs to be shown (with a few tokens around it)"
        )
        top_concepts: int = Field(8, ge=1, le=10, description="concepts in the embed's chart (HatCat summarises 10)")
        timeout_s: float = Field(120.0, gt=0, description="seconds to wait for the analysis")

    def __init__(self) -> None:
        self.valves = self.Valves()

    async def action(self, body: dict, __event_emitter__=None) -> HTMLResponse:
        text = message_text(body)
        if not text.strip():
            raise ValueError("HatCat: this message has no text to analyse")
        if __event_emitter__ is not None:
            await __event_emitter__({"type": "status", "data": {"description": "HatCat: analysing", "done": False}})
        headers = {"Authorization": f"Bearer {self.valves.api_key}"} if self.valves.api_key else {}
        async with httpx.AsyncClient(timeout=self.valves.timeout_s) as client:
            response = await client.post(
                f"{self.valves.hatcat_url.rstrip('/')}/v1/analyze",
                json={"text": text, "top_k": self.valves.top_concepts},
                headers=headers,
            )
        if response.status_code != 200:
            try:
                reason = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                reason = response.text[:200]
            raise RuntimeError(f"HatCat /v1/analyze answered {response.status_code}: {reason}")
        analysis = response.json()
        valves = self.valves
        document = compact_embed(
            analysis["tokens"], analysis["summary"], valves.top_concepts, valves.full_colour_at, valves.passage_at
        )
        if __event_emitter__ is not None:
            await __event_emitter__({"type": "status", "data": {"description": analysis["summary_line"], "done": True}})
        return HTMLResponse(document, headers={"Content-Disposition": "inline"})
