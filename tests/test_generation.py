"""Decoding on the real embedded model through a `Scheduler(max_batch=1)` (the reference): KV-cached
greedy equals HF `generate`, seeds, sampling settings, stop sequences, length, prompts, settings.
(Hooks, steering rows, records and cancellation: tests/test_scheduler.py on the tiny model.)"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from hatcat.api.prompt import build_prompt
from hatcat.batching import Scheduler
from hatcat.engine import Engine
from hatcat.errors import ContextLengthExceeded
from hatcat.generation import Detokenizer, Finished, GenerationSettings, TokenStep, encode_prompt, stop_token_ids
from hatcat.model import load_model
from tests.tiny import ending

PROMPT = "The capital of France is"
GREEDY = GenerationSettings(max_tokens=16, temperature=0)


def decode(scheduler: Scheduler, prompt: str, settings: GenerationSettings) -> tuple[str, list[TokenStep], Finished]:
    events = list(scheduler.submit(prompt, settings))
    finished = ending(events)
    return finished.text, [e.step for e in events[:-1]], finished


@pytest.fixture(scope="module")
def reference(engine: Engine) -> Scheduler:
    return Scheduler(engine.model, engine.tokenizer, engine.exclusive, max_batch=1)


@pytest.fixture(scope="module")
def greedy(reference: Scheduler) -> tuple[str, list[TokenStep], Finished]:
    return decode(reference, PROMPT, GREEDY)


def test_greedy_loop_matches_hf_generate_token_for_token(engine: Engine, greedy) -> None:
    inputs = engine.tokenizer(PROMPT, return_tensors="pt").to(engine.loaded.device)
    eos = sorted(stop_token_ids(engine.model, engine.tokenizer))
    with torch.no_grad():
        out = engine.model.generate(**inputs, max_new_tokens=16, do_sample=False, eos_token_id=eos)
    expected = out[0, inputs.input_ids.shape[1] :].tolist()
    _, steps, finished = greedy
    assert [s.token_id for s in steps] == expected
    assert finished.prompt_tokens == inputs.input_ids.shape[1]


def test_pieces_concatenate_to_the_decoded_text(engine: Engine, greedy) -> None:
    text, steps, finished = greedy
    ids = [s.token_id for s in steps]
    assert text == finished.text == "".join(s.text for s in steps)
    assert text == engine.tokenizer.decode(ids, skip_special_tokens=True)
    assert [s.index for s in steps] == list(range(len(steps)))


def test_incremental_decoding_waits_for_the_rest_of_a_multibyte_character(engine: Engine) -> None:
    ids = engine.tokenizer("a🫨b 𓀀𓀁 ok", add_special_tokens=False).input_ids  # byte-fallback tokens
    detok = Detokenizer(engine.tokenizer)
    pieces = [detok.add(i) for i in ids]
    assert "".join(pieces) + detok.flush() == "a🫨b 𓀀𓀁 ok"
    assert "" in pieces and not any("\ufffd" in p for p in pieces)


def test_same_seed_same_text_and_different_seeds_differ(reference: Scheduler) -> None:
    def sample(seed: int) -> str:
        return decode(reference, PROMPT, GenerationSettings(max_tokens=12, temperature=1.0, seed=seed))[0]

    first = sample(7)
    assert sample(7) == first
    assert len({first, sample(8), sample(9)}) > 1


def test_top_k_top_p_and_repetition_penalty_sample_reproducibly(reference: Scheduler) -> None:
    settings = GenerationSettings(max_tokens=8, temperature=0.9, top_k=40, top_p=0.9, repetition_penalty=1.3, seed=3)
    first = decode(reference, PROMPT, settings)
    assert first[0] == decode(reference, PROMPT, settings)[0] and first[2].completion_tokens == 8


def test_repetition_penalty_changes_a_repetitive_greedy_text(reference: Scheduler, greedy) -> None:
    penalised = decode(reference, PROMPT, GenerationSettings(max_tokens=16, temperature=0, repetition_penalty=1.5))[0]
    assert penalised != greedy[0]  # greedy repeats " the capital of the country of"


def test_max_tokens_gives_finish_reason_length(greedy) -> None:
    _, steps, finished = greedy
    assert finished.finish_reason == "length" and finished.completion_tokens == 16 == len(steps)


@pytest.mark.parametrize(
    "stop, expected",
    [
        ((" country of Fr",), " the capital of the"),  # spans tokens and ends inside " France"
        (("ance. I", "nowhere"), " the capital of the country of Fr"),  # begins inside a token
        ((" the",), ""),  # the very first token
    ],
)
def test_stop_sequence_ends_the_text_and_is_not_included(
    reference: Scheduler, engine: Engine, greedy, stop, expected
) -> None:
    text, steps, finished = decode(reference, PROMPT, GenerationSettings(max_tokens=16, temperature=0, stop=stop))
    assert finished.finish_reason == "stop"
    assert text == expected == "".join(s.text for s in steps)
    assert greedy[0].startswith(text)


def test_text_held_back_for_a_stop_prefix_that_never_completes_comes_out(
    reference: Scheduler, engine: Engine, greedy
) -> None:
    text, steps, finished = decode(
        reference, PROMPT, GenerationSettings(max_tokens=16, temperature=0, stop=(" country of Germany",))
    )
    assert finished.finish_reason == "length"
    assert text == greedy[0] and [s.token_id for s in steps] == [s.token_id for s in greedy[1]]


def test_base_model_prompt_is_the_last_user_message(engine: Engine) -> None:
    assert not engine.tokenizer.chat_template
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "The capital"}, {"type": "text", "text": " of Italy is"}],
        },
    ]
    assert build_prompt(engine.tokenizer, messages) == "The capital of Italy is"
    with pytest.raises(ValueError, match="user message"):
        build_prompt(engine.tokenizer, [{"role": "system", "content": "x"}])
    with pytest.raises(ValueError, match="at least one"):
        build_prompt(engine.tokenizer, [])


@pytest.mark.slow
def test_chat_template_is_used_when_the_tokenizer_has_one(settings) -> None:
    smol = load_model("embedded:smollm2-135m", cache_dir=settings.cache_dir, device="cpu")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = build_prompt(smol.tokenizer, messages)
    assert prompt.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nWhat is the capital of France?" in prompt
    assert encode_prompt(smol.tokenizer, prompt)[0] == smol.tokenizer.convert_tokens_to_ids("<|im_start|>")
    scheduler = Scheduler(smol.model, smol.tokenizer, nullcontext, max_batch=1)
    text, steps, finished = decode(scheduler, prompt, GenerationSettings(max_tokens=12, temperature=0))
    assert "Paris" in text
    assert "<|im_end|>" not in text and finished.completion_tokens >= len(steps)


def test_gemma_prompt_gets_exactly_one_bos(engine: Engine) -> None:
    bos = engine.tokenizer.bos_token_id
    assert encode_prompt(engine.tokenizer, PROMPT).count(bos) == 1
    assert encode_prompt(engine.tokenizer, engine.tokenizer.bos_token + PROMPT).count(bos) == 1


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_tokens", 0),
        ("max_tokens", 2.5),
        ("temperature", -0.1),
        ("temperature", 3.0),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("repetition_penalty", 0.0),
        ("seed", "abc"),
        ("stop", ("",)),
        ("stop", (1,)),
    ],
)
def test_invalid_settings_raise_value_error_naming_the_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        GenerationSettings(**{field: value})


def test_settings_accept_a_single_stop_string_and_lists() -> None:
    assert GenerationSettings(stop="\n").stop == ("\n",)
    assert GenerationSettings(stop=["a", "b"]).stop == ("a", "b")


def test_an_overlong_prompt_is_refused_before_generation(reference: Scheduler, engine: Engine) -> None:
    context = engine.model.config.max_position_embeddings
    with pytest.raises(ContextLengthExceeded, match="context"):
        reference.submit("a " * context, GREEDY)


def test_vanishing_top_p_keeps_the_most_likely_token(reference: Scheduler, greedy) -> None:
    # 1e-46 rounds to 0 in float32: nucleus sampling must still keep the top token (greedy's choice).
    text, _, _ = decode(reference, PROMPT, GenerationSettings(max_tokens=4, temperature=1.0, top_p=1e-46, seed=1))
    assert text == greedy[0][: len(text)] and text
