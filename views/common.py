"""What several panels share: running a monitored generation, the probe-pack guard, user errors.

Views never touch torch: they call the Engine and library functions from here, and keep traces
as plain dicts (`TokenRecord.to_dict(top=None)`: every reported concept), which Gradio state and
JSON export can hold.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import gradio as gr

from hatcat.api.prompt import build_prompt
from hatcat.engine import Engine
from hatcat.errors import HatCatError
from hatcat.generation import GenerationSettings, MonitoredFinish
from hatcat.steering import Steering
from views.access import current_actor

NO_PACK = (
    "**No probe pack is loaded.** Train one in the *Training* tab (it is hot-loaded when done), "
    "or start HatCat with `HATCAT_PROBE_PACK=<folder>`."
)


def require_probes(engine: Engine) -> None:
    """Raise a readable gr.Error when there is nothing to monitor with."""
    if engine.probe_pack_id is None:
        raise gr.Error(NO_PACK.replace("**", ""), print_exception=False)


def user_error(err: Exception) -> gr.Error:
    """A page message (never a stack trace) for an error the user can cause."""
    return gr.Error(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__, print_exception=False)


def settings_from(max_tokens: float, temperature: float, seed: float | None) -> GenerationSettings:
    try:
        return GenerationSettings(
            max_tokens=int(max_tokens), temperature=float(temperature), seed=None if seed is None else int(seed)
        )
    except ValueError as err:
        raise user_error(err) from None


def stream_trace(
    engine: Engine, prompt: str, settings: GenerationSettings, steerings: list[Steering] = (), chat: bool = True
) -> Iterator[tuple[list[dict], dict | None]]:
    """Generate in the engine's running batch; yields (records so far, summary dict or None until the end)."""
    require_probes(engine)
    if not prompt or not prompt.strip():
        raise gr.Error("Write a prompt first.", print_exception=False)
    records: list[dict] = []
    try:
        text = build_prompt(engine.tokenizer, [{"role": "user", "content": prompt}]) if chat else prompt
        generation = engine.generate(text, settings, list(steerings))  # joins the running batch
        try:
            for event in generation:
                if isinstance(event, MonitoredFinish):
                    engine.record_response(records, f"workbench-{uuid.uuid4().hex}", current_actor())
                    summary = {
                        **event.summary.to_dict(),
                        "line": event.summary.line(),
                        "finish_reason": event.finished.finish_reason,
                    }
                    yield records, summary
                    return
                records = records + [event.record.to_dict(top=None)]
                yield records, None
        finally:
            generation.cancel()  # the browser went away (or the generation ended): leave the batch
    except (ValueError, KeyError, HatCatError) as err:
        raise user_error(err) from None


def run_trace(
    engine: Engine, prompt: str, settings: GenerationSettings, steerings: list[Steering] = ()
) -> tuple[list[dict], dict]:
    """A whole generation at once (the steering panel's side-by-side)."""
    records, summary = [], {}
    for records, done in stream_trace(engine, prompt, settings, steerings):
        summary = done or summary
    return records, summary
