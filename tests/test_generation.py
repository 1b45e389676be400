"""The streaming decode loop on the real embedded model: KV-cached greedy equals HF `generate`,
seeds, stop sequences, length, early close, hidden states, steering edits, prompts, settings."""

from __future__ import annotations

import pytest
import torch

from hatcat.api.prompt import build_prompt
from hatcat.engine import Engine
from hatcat.generation import (
    Finished,
    GenerationSettings,
    TokenStep,
    _Detokenizer,
    collect,
    encode_prompt,
    generate,
    stop_token_ids,
)
from hatcat.model import decoder_layers, load_model

PROMPT = "The capital of France is"
LAYER = 9
GREEDY = GenerationSettings(max_tokens=16, temperature=0)


def run(
    engine: Engine, settings: GenerationSettings, prompt: str = PROMPT, **kwargs
) -> tuple[str, list[TokenStep], Finished]:
    return collect(generate(engine.model, engine.tokenizer, prompt, settings, tap_layer=LAYER, **kwargs))


def hooks(engine: Engine) -> list[list[int]]:
    """The forward-hook ids on every decoder block."""
    return [list(block._forward_hooks) for block in decoder_layers(engine.model)]


@pytest.fixture(scope="module")
def greedy(engine: Engine) -> tuple[str, list[TokenStep], Finished]:
    return run(engine, GREEDY)


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
    detok = _Detokenizer(engine.tokenizer)
    pieces = [detok.add(i) for i in ids]
    assert "".join(pieces) + detok.flush() == "a🫨b 𓀀𓀁 ok"
    assert "" in pieces and not any("\ufffd" in p for p in pieces)


def test_same_seed_same_text_and_different_seeds_differ(engine: Engine) -> None:
    def sample(seed: int) -> str:
        return run(engine, GenerationSettings(max_tokens=12, temperature=1.0, seed=seed))[0]

    first = sample(7)
    assert sample(7) == first
    assert len({first, sample(8), sample(9)}) > 1


def test_top_k_top_p_and_repetition_penalty_sample_reproducibly(engine: Engine) -> None:
    settings = GenerationSettings(max_tokens=8, temperature=0.9, top_k=40, top_p=0.9, repetition_penalty=1.3, seed=3)
    first = run(engine, settings)
    assert first[0] == run(engine, settings)[0] and first[2].completion_tokens == 8


def test_repetition_penalty_changes_a_repetitive_greedy_text(engine: Engine, greedy) -> None:
    penalised = run(engine, GenerationSettings(max_tokens=16, temperature=0, repetition_penalty=1.5))[0]
    assert penalised != greedy[0]  # greedy repeats " the capital of the country of"


def test_max_tokens_gives_finish_reason_length_with_one_hidden_per_token(engine: Engine, greedy) -> None:
    _, steps, finished = greedy
    assert finished.finish_reason == "length" and finished.completion_tokens == 16 == len(steps)
    for step in steps:
        assert step.hidden.shape == (engine.loaded.hidden_size,)
        assert step.hidden.device == engine.loaded.device and step.hidden.dtype == engine.loaded.dtype
    assert not torch.equal(steps[0].hidden, steps[1].hidden)


def test_first_hidden_is_the_last_prompt_position_at_the_tap_layer(engine: Engine, greedy) -> None:
    inputs = engine.tokenizer(PROMPT, return_tensors="pt").to(engine.loaded.device)
    with torch.no_grad():
        states = engine.model(**inputs, output_hidden_states=True).hidden_states
    # hidden_states[0] is the embeddings, so block LAYER's output is hidden_states[LAYER + 1].
    torch.testing.assert_close(greedy[1][0].hidden, states[LAYER + 1][0, -1])


@pytest.mark.parametrize(
    "stop, expected",
    [
        ((" country of Fr",), " the capital of the"),  # spans tokens and ends inside " France"
        (("ance. I", "nowhere"), " the capital of the country of Fr"),  # begins inside a token
        ((" the",), ""),  # the very first token
    ],
)
def test_stop_sequence_ends_the_text_and_is_not_included(engine: Engine, greedy, stop, expected) -> None:
    text, steps, finished = run(engine, GenerationSettings(max_tokens=16, temperature=0, stop=stop))
    assert finished.finish_reason == "stop"
    assert text == expected == "".join(s.text for s in steps)
    assert greedy[0].startswith(text)


def test_text_held_back_for_a_stop_prefix_that_never_completes_comes_out(engine: Engine, greedy) -> None:
    text, steps, finished = run(engine, GenerationSettings(max_tokens=16, temperature=0, stop=(" country of Germany",)))
    assert finished.finish_reason == "length"
    assert text == greedy[0] and [s.token_id for s in steps] == [s.token_id for s in greedy[1]]


def test_closing_the_generator_early_removes_the_hook(engine: Engine) -> None:
    layer = decoder_layers(engine.model)[LAYER]
    before = hooks(engine)  # transformers may keep its own output-capturing hooks; ours must go
    events = generate(engine.model, engine.tokenizer, PROMPT, GenerationSettings(max_tokens=16, temperature=0), LAYER)
    first = next(events)
    assert isinstance(first, TokenStep) and len(layer._forward_hooks) == len(before[LAYER]) + 1
    events.close()
    assert hooks(engine) == before
    # and breaking out of a for loop does the same once the generator is dropped
    for _event in generate(engine.model, engine.tokenizer, PROMPT, GenerationSettings(max_tokens=16), LAYER):
        break
    del _event
    assert hooks(engine) == before


def test_hook_is_removed_when_the_edit_raises(engine: Engine) -> None:
    def broken(hidden: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("edit failed")

    before = hooks(engine)
    with pytest.raises(RuntimeError, match="edit failed"):
        run(engine, GREEDY, edit=broken)
    assert hooks(engine) == before


def test_edit_function_steers_the_generated_text(engine: Engine, greedy) -> None:
    direction = torch.randn(engine.loaded.hidden_size, generator=torch.Generator().manual_seed(0))
    direction = (direction / direction.norm()).to(engine.loaded.device, engine.loaded.dtype)

    def push(hidden: torch.Tensor) -> torch.Tensor:
        return hidden + 200.0 * direction

    text, steps, _ = run(engine, GREEDY, edit=push)
    assert text != greedy[0]
    # the reported state is the edited one
    assert (
        torch.dot(steps[0].hidden.float(), direction.float())
        > torch.dot(greedy[1][0].hidden.float(), direction.float()) + 100
    )


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
    text, steps, finished = collect(
        generate(smol.model, smol.tokenizer, prompt, GenerationSettings(max_tokens=12, temperature=0), 15)
    )
    assert "Paris" in text
    assert steps[0].hidden.shape == (smol.hidden_size,)
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


def test_bad_tap_layer_and_overlong_prompt_are_refused_before_generation(engine: Engine) -> None:
    with pytest.raises(ValueError, match="tap_layer"):
        generate(engine.model, engine.tokenizer, PROMPT, GREEDY, tap_layer=99)
    context = engine.model.config.max_position_embeddings
    with pytest.raises(ValueError, match="context"):
        generate(engine.model, engine.tokenizer, "a " * context, GREEDY, tap_layer=LAYER)


def test_vanishing_top_p_keeps_the_most_likely_token(engine: Engine, greedy) -> None:
    # 1e-46 rounds to 0 in float32: nucleus sampling must still keep the top token (greedy's choice).
    text, _, _ = run(engine, GenerationSettings(max_tokens=4, temperature=1.0, top_p=1e-46, seed=1))
    assert text == greedy[0][: len(text)] and text
