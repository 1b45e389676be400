"""
title: HatCat divergence
author: HatCat
version: 0.1.0
description: Shows where a HatCat answer diverges (a compact embed above the message) and a status line.
"""

# An OpenWebUI Filter function. OpenWebUI hands `stream` every chunk the model server sends, as
# parsed JSON; HatCat's chunks carry `choices[0].delta.metadata` (the token's divergence and top
# concepts, then the response summary). The filter collects them per message, shows a status line
# at the first token and then at most every `status_every_s` (each is a database write) and, at
# `finish_reason`, emits one compact embed: the summary, a top-concepts chart and the passages
# coloured by divergence (hover titles), not the whole answer again. Chunks of other models carry
# no such metadata and pass untouched. The installer (`python -m hatcat.openwebui install`)
# inlines the modules imported below, so the installed function is one source file.

import logging
import time
from collections import OrderedDict

from pydantic import BaseModel, Field

from hatcat.heatmap import embeds_event, status_event  # inlined by the installer
from hatcat.openwebui.passages import compact_embed  # inlined by the installer

log = logging.getLogger("hatcat.openwebui.filter")

MAX_OPEN_MESSAGES = 256  # messages whose stream never finished are forgotten oldest first


class _Message:
    """What one streaming answer has shown so far."""

    def __init__(self) -> None:
        self.records: list[dict] = []
        self.summary: dict | None = None
        self.last_status = float("-inf")  # the first token always gets a status line


class Filter:
    class Valves(BaseModel):
        priority: int = Field(0, description="order among filters (lower runs first)")
        full_colour_at: float = Field(
            1.0, gt=0, description="divergence shown at full red (and its negative at full blue)"
        )
        passage_at: float = Field(
            0.5, ge=0, le=1, description="share of full colour a token needs to be shown (with a few tokens around it)"
        )
        top_concepts: int = Field(8, ge=1, le=10, description="concepts in the embed's chart (HatCat summarises 10)")
        status_every_s: float = Field(
            15.0, ge=0, description="least seconds between status lines while streaming (each is a database write)"
        )

    def __init__(self) -> None:
        self.valves = self.Valves()
        self.messages: OrderedDict[str, _Message] = OrderedDict()  # one Filter serves every request

    async def stream(self, event: dict, __event_emitter__=None, __message_id__=None) -> dict:
        """Watch one upstream chunk; always pass it on unchanged."""
        try:
            await self._watch(event, __event_emitter__, __message_id__ or event.get("id"))
        except Exception:  # a rendering fault must never break the chat itself
            log.exception("HatCat divergence filter: chunk skipped")
        return event

    async def _watch(self, event: dict, emit, key: str | None) -> None:
        choices = event.get("choices") or []
        if not choices or key is None:
            return
        choice = choices[0]
        delta = choice.get("delta") or {}
        meta = delta.get("metadata") or {}
        if "token_index" in meta and meta.get("divergence"):
            message = self._message(key)
            self._add_token(message, meta, delta.get("content") or "")
            await self._status(message, emit, done=False)
        elif meta.get("analysis") and key in self.messages:
            self.messages[key].summary = meta["analysis"]
        if choice.get("finish_reason") and key in self.messages:
            message = self.messages.pop(key)
            if emit is not None:
                valves = self.valves
                document = compact_embed(
                    message.records, message.summary, valves.top_concepts, valves.full_colour_at, valves.passage_at
                )
                await emit(embeds_event(document))
            await self._status(message, emit, done=True)

    def _message(self, key: str) -> _Message:
        if key not in self.messages:
            self.messages[key] = _Message()
            while len(self.messages) > MAX_OPEN_MESSAGES:
                self.messages.popitem(last=False)
        return self.messages[key]

    @staticmethod
    def _add_token(message: _Message, meta: dict, text: str) -> None:
        """The token's record, as HatCat's API shapes one (`TokenRecord.to_dict()`)."""
        record = {
            "index": meta["token_index"],
            "token": text,
            "color": meta.get("color"),
            "divergence": meta["divergence"],
        }
        message.records.append(record)

    async def _status(self, message: _Message, emit, done: bool) -> None:
        now = time.monotonic()
        if emit is None or (not done and now - message.last_status < self.valves.status_every_s):
            return
        message.last_status = now
        await emit(status_event(message.records, done))
