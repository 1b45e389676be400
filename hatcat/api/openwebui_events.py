"""The opt-in OpenWebUI event lines at the end of a streamed chat completion.

OpenWebUI forwards an upstream SSE line `data: {"choices": [], "event": {...}}` to its event
emitter, so a server can put HatCat's coloured token view above the message with nothing
installed in OpenWebUI. Ordinary OpenAI clients must never see such a line: it is sent only when
the request carries `X-HatCat-OpenWebUI-Events: 1` (set per connection in OpenWebUI's
`OPENAI_API_CONFIGS` headers). The embed is the compact one the OpenWebUI functions draw (their
default valves).
"""

from __future__ import annotations

from fastapi import Request

from hatcat.heatmap import embeds_event, event_line, status_event
from hatcat.monitor import ResponseSummary
from hatcat.openwebui.passages import compact_embed

HEADER = "X-HatCat-OpenWebUI-Events"
ON = {"1", "true", "yes", "on"}


class OpenWebUIEvents:
    """One stream's records; at its end, a final status line and the embed as event lines."""

    def __init__(self) -> None:
        self.records: list[dict] = []  # `TokenRecord.to_dict()`s

    @classmethod
    def requested(cls, request: Request) -> OpenWebUIEvents | None:
        return cls() if request.headers.get(HEADER, "").strip().lower() in ON else None

    def lines(self, summary: ResponseSummary | None) -> str:
        if not self.records:
            return ""
        document = compact_embed(self.records, summary.to_dict() if summary else None, 8, 1.0, 0.5)
        return event_line(status_event(self.records, done=True)) + event_line(embeds_event(document))
