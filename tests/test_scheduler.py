"""The hot path on a tiny random Gemma 3 (tests/tiny.py), in seconds: a request in a batch equals its
`Scheduler(max_batch=1)` run, joins and leaves, stop sequences, steering rows, cancellation, the
queue bound, token records, and the streamed chunks through the app on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest
import torch

from hatcat.api import create_api
from hatcat.api.protocol import ChunkMetadata, TokenReport
from hatcat.batching import QueueFull, Scheduler
from hatcat.engine import Engine
from hatcat.generation import Decoder, GenerationSettings
from hatcat.heatmap import divergence_colour
from hatcat.model import decoder_layers
from hatcat.monitor import TextWindow, mean_embeddings
from hatcat.steering import Steering, UnknownConcept
from hatcat.tap import hidden_at
from tests.support import serve, wait_until
from tests.tiny import TAP, ending, solo, tiny_engine, token_ids, token_records

PROMPTS = [
    "Tell me about your dog.",
    "Hi",
    "A lighthouse keeper finds a message in a bottle; the sea is calm and the stars are out tonight.",
    "Why is the sky blue?",
    "List three fruits: apple, pear, plum.",
    "The weather was mild, so we walked to the market.",
    "Fear",
    "Music, deception and a quiet morning in a small village by the mountains.",
]
GREEDY = GenerationSettings(max_tokens=16, min_tokens=16, temperature=0)
RECORD_TOLERANCE = 2e-4  # padded attention may reorder sums; records round to 4 decimals


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return tiny_engine(tmp_path_factory.mktemp("tiny") / "pack")


def batch(engine: Engine, max_batch: int = 8, max_queue: int = 16) -> Scheduler:
    return Scheduler(engine.model, engine.tokenizer, engine.exclusive, max_batch=max_batch, max_queue=max_queue)


def hooks(engine: Engine) -> list[list[int]]:
    return [list(block._forward_hooks) for block in decoder_layers(engine.model)]


def test_a_greedy_request_alone_and_inside_a_batch_of_eight_gets_the_same_tokens_and_records(tiny: Engine) -> None:
    steers = [(), (Steering("Fear", 0.5),), (), (), (Steering("Music", -0.5),), (), (), ()]
    others = [
        (text, GenerationSettings(max_tokens=4 + 3 * i, temperature=0.25 * i, top_p=0.9, seed=i), steer)
        for i, (text, steer) in enumerate(zip(PROMPTS[1:], steers[1:]), 1)
    ]
    scheduler, before = batch(tiny), hooks(tiny)
    generations = [scheduler.submit(PROMPTS[0], GREEDY, (), tiny.monitor, tiny.vectors)] + [
        scheduler.submit(text, settings, steer, tiny.monitor, tiny.vectors) for text, settings, steer in others
    ]
    batched = [list(g) for g in generations]
    alone = solo(tiny, PROMPTS[0], GREEDY)
    assert token_ids(batched[0]) == token_ids(alone) and ending(batched[0]).text == ending(alone).text
    for b, a in zip(token_records(batched[0]), token_records(alone), strict=True):
        assert (b.index, b.token) == (a.index, a.token)
        worst = max(abs(x.activation - y.activation) for x, y in zip(b.concepts, a.concepts, strict=True))
        assert worst <= RECORD_TOLERANCE
    # every other row is its own solo run too: seeded sampling, its own max_tokens, its own steering
    for (text, settings, steer), events in zip(others, batched[1:]):
        assert token_ids(events) == token_ids(solo(tiny, text, settings, steer))
        assert ending(events).completion_tokens <= settings.max_tokens
    assert hooks(tiny) == before  # steering and tap hooks live for one forward each


def test_a_request_joins_a_running_batch_and_leaves_while_the_long_one_goes_on(tiny: Engine) -> None:
    scheduler = batch(tiny)
    settings = GenerationSettings(max_tokens=60, min_tokens=60, temperature=0)
    long = scheduler.submit(PROMPTS[2], settings, (), tiny.monitor, tiny.vectors)
    first = [next(long) for _ in range(3)]  # running
    short_settings = GenerationSettings(max_tokens=3, temperature=0)
    short = list(scheduler.submit(PROMPTS[3], short_settings, (), tiny.monitor, tiny.vectors))
    assert ending(short).completion_tokens <= 3
    wait_until(lambda: scheduler.depth == 1, "the short row leaving the batch")  # the long one still runs
    rest = list(long)
    assert ending(first + rest).finish_reason == "length"
    assert token_ids(first + rest) == token_ids(solo(tiny, PROMPTS[2], settings))
    assert token_ids(short) == token_ids(solo(tiny, PROMPTS[3], short_settings))


def test_a_stop_sequence_ends_the_text_where_it_begins_and_a_prefix_that_never_completes_comes_out(
    tiny: Engine,
) -> None:
    settings = GenerationSettings(max_tokens=24, min_tokens=24, temperature=0)
    full = ending(solo(tiny, PROMPTS[0], settings)).text
    stop = full[6:14]
    events = solo(tiny, PROMPTS[0], GenerationSettings(max_tokens=24, temperature=0, stop=(stop, "never seen")))
    cut = ending(events)
    assert cut.finish_reason == "stop" and cut.text == full[: full.index(stop)]
    # text held back while it could begin a stop sequence is released once it cannot
    almost = solo(tiny, PROMPTS[0], GenerationSettings(max_tokens=24, min_tokens=24, temperature=0, stop=stop + "\x00"))
    assert ending(almost).finish_reason == "length" and ending(almost).text == full


def test_the_decoder_waits_for_the_rest_of_a_multibyte_character(tiny: Engine) -> None:
    text = "a🫨b 𓀀 東京 ok"
    ids = tiny.tokenizer(text, add_special_tokens=False).input_ids
    decoder = Decoder(tiny.tokenizer, GenerationSettings(), set(), prompt=1, room=len(ids))
    steps = [step for token in ids for step in decoder.push(token)[0]]
    assert "".join(s.text for s in steps) == text and "\ufffd" not in "".join(s.text for s in steps)
    assert any(s.text == "" for s in steps)  # a byte that is half a character releases no text yet


def test_steering_changes_its_own_row_only(tiny: Engine) -> None:
    scheduler = batch(tiny)
    steer = (Steering("Music", 2.0),)
    plain, steered = (scheduler.submit(PROMPTS[5], GREEDY, s, tiny.monitor, tiny.vectors) for s in ((), steer))
    plain, steered = list(plain), list(steered)
    assert token_ids(plain) == token_ids(solo(tiny, PROMPTS[5], GREEDY))
    assert token_ids(steered) == token_ids(solo(tiny, PROMPTS[5], GREEDY, steer)) != token_ids(plain)


def test_a_steering_the_pack_has_no_probe_for_fails_its_row_alone(tiny: Engine) -> None:
    scheduler = batch(tiny)
    ok = scheduler.submit(PROMPTS[0], GREEDY, (), tiny.monitor, tiny.vectors)
    bad = scheduler.submit(PROMPTS[1], GREEDY, (Steering("NoSuchConcept", 0.5),), tiny.monitor, tiny.vectors)
    with pytest.raises(UnknownConcept):
        list(bad)
    assert ending(list(ok)).completion_tokens == 16


def test_a_cancelled_row_leaves_the_batch_and_the_others_complete(tiny: Engine) -> None:
    scheduler, before = batch(tiny), hooks(tiny)
    settings = GenerationSettings(max_tokens=40, min_tokens=40, temperature=0.8, seed=5)
    generations = [scheduler.submit(p, settings, (), tiny.monitor, tiny.vectors) for p in PROMPTS[:3]]
    flag = threading.Event()
    flagged = scheduler.submit(PROMPTS[3], settings, (), tiny.monitor, tiny.vectors, cancel=flag)
    next(generations[1])
    generations[1].cancel()
    assert list(generations[1]) == []  # iteration ends at once
    next(flagged)
    flag.set()  # the API sets a request's flag when its client goes away
    assert list(flagged) == []
    assert all(ending(list(g)).completion_tokens == 40 for i, g in enumerate(generations) if i != 1)
    wait_until(lambda: scheduler.depth == 0, "the batch emptying")
    assert hooks(tiny) == before


def test_past_the_queue_bound_a_request_is_refused_with_429_and_the_waiting_one_gets_the_slot(tiny: Engine) -> None:
    small = batch(tiny, max_batch=1, max_queue=1)
    running = small.submit(PROMPTS[0], GenerationSettings(max_tokens=200, min_tokens=200), (), tiny.monitor)
    next(running)  # admitted: the one batch slot is taken
    waiting = small.submit(PROMPTS[1], GenerationSettings(max_tokens=2), (), tiny.monitor)
    with pytest.raises(QueueFull) as refused:
        small.submit(PROMPTS[2], GenerationSettings(max_tokens=2), (), tiny.monitor)
    assert refused.value.status == 429 and "HATCAT_MAX_QUEUE" in str(refused.value)
    running.cancel()
    assert ending(list(waiting)).completion_tokens <= 2


def test_the_first_record_reads_the_tap_state_after_the_prompt_and_the_prompt_words(tiny: Engine) -> None:
    first = token_records(solo(tiny, PROMPTS[0], GREEDY))[0]
    ids = tiny.tokenizer(PROMPTS[0]).input_ids
    with torch.inference_mode():
        state = hidden_at(tiny.model, {"input_ids": torch.tensor([ids])}, [TAP])[TAP][0, -1]
        window = TextWindow()
        window.push(ids[1:])  # the words side reads the prompt's tokens after BOS
        words = mean_embeddings(tiny.model.get_input_embeddings(), [window])
        expected = tiny.monitor.score(state[None], words, [first.token])[0]
    assert [c.concept for c in first.concepts] == [c.concept for c in expected.concepts]
    assert max(abs(a.activation - b.activation) for a, b in zip(first.concepts, expected.concepts)) <= 1e-4


def test_a_record_has_one_shape_with_its_color_from_its_divergence(tiny: Engine) -> None:
    record = token_records(solo(tiny, PROMPTS[0], GREEDY))[0]
    report = TokenReport.model_validate(record.to_dict())  # the API's schema
    assert report.color == record.color == divergence_colour(record.max_divergence)
    every = record.to_dict(top=None)["divergence"]["top_divergences"]
    assert len(every) == len(record.concepts) and every == sorted(every, key=lambda c: -c["divergence"])
    assert len(record.to_dict(top=1)["divergence"]["top_divergences"]) == 1


@pytest.fixture(scope="module")
def tiny_server(tiny: Engine) -> Iterator[str]:
    with serve(create_api(tiny)) as base:
        yield base


def sse(base: str, body: dict) -> list[dict]:
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_streamed_chunks_carry_each_token_record_then_the_analysis_then_the_finish(tiny_server: str) -> None:
    body = {"messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 12, "temperature": 0}
    chunks = sse(tiny_server, {**body, "stream": True, "min_tokens": 12})
    *tokens, analysis, finish = chunks
    metas = [ChunkMetadata.model_validate(c["choices"][0]["delta"]["metadata"]) for c in tokens]
    assert [m.token_index for m in metas] == list(range(12)) and all(m.monitoring for m in metas)
    assert tokens[0]["choices"][0]["delta"]["role"] == "assistant"
    assert analysis["choices"][0]["delta"]["metadata"]["analysis"]["tokens"] == 12
    assert analysis["choices"][0]["delta"]["content"].startswith("\n\n**Analysis**")
    assert finish["choices"][0]["finish_reason"] == "length" and finish["usage"]["completion_tokens"] == 12
    # the answer without streaming: the same text and the same records
    answer = httpx.post(f"{tiny_server}/v1/chat/completions", json={**body, "min_tokens": 12}, timeout=120).json()
    assert answer["choices"][0]["message"]["content"] == "".join(c["choices"][0]["delta"]["content"] for c in tokens)
    streamed = [{"color": m.color, "divergence": m.divergence.model_dump()} for m in metas]
    assert [{k: t[k] for k in ("color", "divergence")} for t in answer["hatcat"]["tokens"]] == streamed


def test_a_client_that_goes_away_mid_stream_frees_the_batch(tiny: Engine, tiny_server: str) -> None:
    body = {"messages": [{"role": "user", "content": PROMPTS[2]}], "max_tokens": 2000, "min_tokens": 2000}
    with httpx.stream("POST", f"{tiny_server}/v1/chat/completions", json={**body, "stream": True}) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        assert tiny.scheduler.depth == 1
    wait_until(lambda: tiny.scheduler.depth == 0, "the abandoned stream leaving the batch")


def test_an_invalid_setting_is_a_400_naming_it_from_the_one_validation(tiny_server: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    for field, value in (("temperature", 2.5), ("top_p", 0), ("top_k", -1), ("seed", 2**60)):
        error = httpx.post(f"{tiny_server}/v1/chat/completions", json={**body, field: value}).json()["error"]
        assert error["param"] == field and error["type"] == "invalid_request_error"
    error = httpx.post(f"{tiny_server}/v1/chat/completions", json={**body, "max_tokens": 2, "min_tokens": 3}).json()
    assert error["error"]["param"] == "min_tokens"
