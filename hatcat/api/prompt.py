"""Chat messages -> the prompt text the model continues (the API layer's job, not generation's)."""

from __future__ import annotations

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from hatcat.api.errors import APIError
from hatcat.engine import Engine
from hatcat.errors import InvalidValue
from hatcat.generation import encode_prompt
from hatcat.model import check_context


def build_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> str:
    """The tokenizer's chat template with the generation prompt when it has one; otherwise the
    last user message's content (base models such as Gemma 3 270M, as the original does)."""
    if not messages:
        raise InvalidValue("messages must hold at least one message", param="messages")
    if getattr(tokenizer, "chat_template", None):
        normalised = [{**message, "content": _content_text(message.get("content"))} for message in messages]
        return tokenizer.apply_chat_template(normalised, tokenize=False, add_generation_prompt=True)
    for message in reversed(messages):
        if message.get("role") == "user":
            return _content_text(message.get("content"))
    raise InvalidValue(
        "messages hold no user message to use as the prompt (this model has no chat template)", param="messages"
    )


def _content_text(content: object) -> str:
    """A message's text: a string, or OpenAI's list of content parts (text parts joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    raise InvalidValue(
        f"message content must be a string or a list of content parts, got {type(content).__name__}", param="messages"
    )


def chat_prompt(engine: Engine, messages: list[dict]) -> str:
    """`build_prompt` for a request: refused (400, param `messages`) when the messages make no prompt,
    an empty one, or one longer than the model's context."""
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
