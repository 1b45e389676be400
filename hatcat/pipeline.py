"""The hot path wired together: generation -> tap -> probe bank -> monitor, and text analysis.

`monitored_generation` streams `MonitoredToken`s (a generated token and its `TokenRecord`)
and ends with `MonitoredFinish` (usage and the response summary). `analyze_text` scores a
given text in one forward pass that stops at the tap layer.

Which state a record reads: in generation, token k's record uses the tap state that produced
token k (the model's state after reading everything before it); the words-only side reads the
same span, the last TEXT_WINDOW tokens up to that position. In analysis, token t's record
uses the state at t itself (after reading t) and the words up to t.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from hatcat.generation import Finished, GenerationSettings, TokenStep, encode_prompt, generate
from hatcat.monitor import Monitor, ResponseSummary, TextWindow, TokenRecord, summarise, window_means
from hatcat.steering import Steering, SteeringVectors, steered
from hatcat.tap import hidden_at


@dataclass(frozen=True)
class MonitoredToken:
    step: TokenStep
    record: TokenRecord


@dataclass(frozen=True)
class MonitoredFinish:
    finished: Finished
    summary: ResponseSummary


def monitored_generation(
    model: torch.nn.Module,
    tokenizer,
    monitor: Monitor,
    vectors: SteeringVectors,
    prompt: str,
    settings: GenerationSettings,
    steerings: list[Steering] = (),
) -> Iterator[MonitoredToken | MonitoredFinish]:
    """Generate with steering applied and every token monitored; the caller holds the engine lock."""
    window = TextWindow(model.get_input_embeddings())
    with torch.inference_mode():
        window.push(
            [i for i in encode_prompt(tokenizer, prompt) if i != tokenizer.bos_token_id]
        )  # words only, as in training
    records: list[TokenRecord] = []
    with steered(model, vectors, list(steerings)):
        for event in generate(model, tokenizer, prompt, settings, monitor.bank.tap_layer):
            if isinstance(event, Finished):
                yield MonitoredFinish(event, summarise(records))
                return
            # inference mode per token, never across a yield (as in generate): the consumer's code stays outside it
            with torch.inference_mode():
                record = monitor.score(event.hidden[None], window.mean()[None], [event.text], start=event.index)[0]
                window.push([event.token_id])
            records.append(record)
            yield MonitoredToken(event, record)


@torch.inference_mode()
def analyze_text(model: torch.nn.Module, tokenizer, monitor: Monitor, text: str) -> list[TokenRecord]:
    """Records for every token of `text` from one forward pass up to the tap layer."""
    return monitor.score(*text_states(model, tokenizer, monitor, text))


@torch.inference_mode()
def text_states(
    model: torch.nn.Module, tokenizer, monitor: Monitor, text: str
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """For every token of `text` (BOS skipped): tap states [T, d], words-only windows [T, d], token texts."""
    ids = tokenizer(text, return_tensors="pt").input_ids.to(monitor.bank.act_weight.device)
    layer = monitor.bank.tap_layer
    hidden = hidden_at(model, {"input_ids": ids}, [layer])[layer][0]
    first = 1 if tokenizer.bos_token_id is not None and ids[0, 0] == tokenizer.bos_token_id else 0
    windows = window_means(model.get_input_embeddings()(ids[0, first:]))
    tokens = [tokenizer.decode([i]) for i in ids[0, first:].tolist()]
    return hidden[first:], windows, tokens
