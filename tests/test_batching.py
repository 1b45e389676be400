"""Continuous batching on the real model (fp32 for token identity, so it never skips): a request
inside a full batch of different-length prompts (other settings, seeds, steering) gets the tokens
and records it gets from a `Scheduler(max_batch=1)`; a request joins and leaves mid-batch; and
through the real `openai` client, eight concurrent streams with different settings, one cancelled
mid-way, the others complete; the API's 429 past the queue bound. (Cancellation, the queue bound
and steering rows on their own: tests/test_scheduler.py on the tiny model.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from hatcat.api.prompt import build_prompt
from hatcat.batching import Scheduler
from hatcat.engine import Engine
from hatcat.generation import GenerationSettings
from hatcat.steering import Steering
from tests.support import start_app, stop_app, wait_until
from tests.tiny import ending, solo, token_ids, token_records

QUESTIONS = [
    "Tell me about your dog.",
    "Hi",
    "Write a long poem about the sea and the sailors who cross it at night, with storms and stars.",
    "Why is the sky blue?",
    "List three fruits.",
    "Explain how a bicycle works in three sentences, please, for a child who has never seen one.",
    "What is fear?",
    "Describe a quiet morning in a small village by the mountains.",
]
# Records of a row in a batch vs alone (fp32): padded attention may reorder sums (1e-4 on a
# probability) and records round to 4 decimals (another 1e-4).
RECORD_TOLERANCE = 2e-4


def prompt(engine: Engine, question: str) -> str:
    return build_prompt(engine.tokenizer, [{"role": "user", "content": question}])


def collect_all(generations: list) -> list[list]:
    with ThreadPoolExecutor(len(generations)) as pool:
        return list(pool.map(list, generations))


@pytest.fixture(scope="module")
def scheduler(fp32_engine: Engine) -> Scheduler:
    """A scheduler of its own (the engine's own batch stays untouched)."""
    return Scheduler(fp32_engine.model, fp32_engine.tokenizer, fp32_engine.exclusive, max_batch=8, max_queue=16)


def test_greedy_request_alone_and_in_a_full_batch_of_other_lengths_and_settings_is_identical(
    fp32_engine: Engine, scheduler: Scheduler
) -> None:
    engine = fp32_engine
    greedy = GenerationSettings(max_tokens=16, temperature=0)
    target = prompt(engine, QUESTIONS[0])
    alone = solo(engine, target, greedy)
    others = [
        (prompt(engine, q), GenerationSettings(max_tokens=4 + 3 * i, temperature=0.3 * i, top_p=0.9, seed=i), steer)
        for i, (q, steer) in enumerate(
            zip(QUESTIONS[1:], [(), (Steering("Fear", 0.2),), (), (), (Steering("Music", -0.1),), (), ()])
        )
    ]
    generations = [scheduler.submit(target, greedy, (), engine.monitor, engine.vectors)] + [
        scheduler.submit(text, settings, steer, engine.monitor, engine.vectors) for text, settings, steer in others
    ]
    batched = collect_all(generations)
    assert token_ids(batched[0]) == token_ids(alone)
    assert ending(batched[0]).text == ending(alone).text
    worst = 0.0
    for b, a in zip(token_records(batched[0]), token_records(alone), strict=True):
        assert (b.index, b.token) == (a.index, a.token)
        assert [c.concept for c in b.concepts] == [c.concept for c in a.concepts]
        worst = max([worst] + [abs(x.activation - y.activation) for x, y in zip(b.concepts, a.concepts)])
    assert worst <= RECORD_TOLERANCE, worst
    # every other row is its own solo run too: seeded sampling, its own max_tokens, per-row steering
    for (text, settings, steer), events in zip(others, batched[1:]):
        assert token_ids(events) == token_ids(solo(engine, text, settings, steer))


def test_a_request_joins_a_running_batch_and_leaves_without_waiting(fp32_engine: Engine, scheduler: Scheduler) -> None:
    engine, settings = fp32_engine, GenerationSettings(max_tokens=40, min_tokens=40, temperature=0)
    long = scheduler.submit(prompt(engine, QUESTIONS[2]), settings, (), engine.monitor, engine.vectors)
    first = [next(long) for _ in range(3)]  # the batch is running
    short_settings = GenerationSettings(max_tokens=3, temperature=0)
    short = list(scheduler.submit(prompt(engine, QUESTIONS[3]), short_settings, (), engine.monitor, engine.vectors))
    assert ending(short).completion_tokens <= 3
    wait_until(lambda: scheduler.depth == 1, "the short row leaving")  # while the long one (30+ tokens to go) runs
    rest = list(long)
    assert ending(first + rest).completion_tokens == 40
    assert token_ids(first + rest) == token_ids(solo(engine, prompt(engine, QUESTIONS[2]), settings))
    assert token_ids(short) == token_ids(solo(engine, prompt(engine, QUESTIONS[3]), short_settings))


# ---- through the HTTP API ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_queue_server(small_probe_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app with room for one running and one waiting generation."""
    env = {"HATCAT_PROBE_PACK": str(small_probe_pack), "HATCAT_MAX_BATCH": "1", "HATCAT_MAX_QUEUE": "1"}
    proc, base = start_app(env, tmp_path_factory.mktemp("queue") / "app.log")
    try:
        yield base
    finally:
        stop_app(proc)


def client_for(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=300)


def test_eight_concurrent_streams_with_different_settings_one_cancelled_the_others_complete(server: str) -> None:
    client = client_for(server)
    settings = [
        {"temperature": 0, "max_tokens": 12},
        {"temperature": 1.0, "seed": 1, "max_tokens": 8},
        {"temperature": 0.7, "top_p": 0.5, "seed": 2, "max_tokens": 10},
        {"temperature": 0, "max_tokens": 30},  # cancelled after three chunks
        {"temperature": 1.2, "seed": 3, "max_tokens": 6, "stop": ["."]},
        {"temperature": 0, "max_tokens": 9, "extra_body": {"repetition_penalty": 1.3}},
        {"temperature": 0.5, "seed": 4, "max_tokens": 7, "extra_body": {"top_k": 5}},
        {"temperature": 0, "max_tokens": 5, "stop": ["\n\n\n"]},
    ]
    barrier = threading.Barrier(len(settings))

    def run(index: int) -> tuple[str | None, int]:
        barrier.wait()
        stream = client.chat.completions.create(
            model="hatcat-divergence",
            messages=[{"role": "user", "content": QUESTIONS[index]}],
            stream=True,
            **settings[index],
        )
        finish, chunks = None, 0
        for chunk in stream:
            chunks += 1
            if index == 3 and chunks == 3:
                stream.close()  # the client goes away mid-way
                return "cancelled", chunks
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        return finish, chunks

    with ThreadPoolExecutor(len(settings)) as pool:
        results = list(pool.map(run, range(len(settings))))
    assert results[3][0] == "cancelled"
    assert all(finish in ("stop", "length") for i, (finish, _) in enumerate(results) if i != 3), results
    greedy = client.chat.completions.create(
        model="hatcat-divergence", messages=[{"role": "user", "content": QUESTIONS[0]}], **settings[0]
    )
    assert greedy.choices[0].finish_reason in ("stop", "length")


def test_the_api_answers_429_past_the_queue_bound(small_queue_server: str) -> None:
    client = client_for(small_queue_server)
    messages = [{"role": "user", "content": QUESTIONS[0]}]
    running = client.chat.completions.create(model="hatcat-divergence", messages=messages, stream=True, max_tokens=400)
    next(iter(running))  # the one batch slot is taken
    results: list[object] = []
    waiter = threading.Thread(
        target=lambda: results.append(
            client.chat.completions.create(model="hatcat-divergence", messages=messages, max_tokens=2)
        )
    )
    waiter.start()
    # queue_depth: generations running or waiting, plus the model lock's holder (a batch step) and waiters;
    # 3 = the running one, its step, and the second one waiting (without it, at most 2)
    health = f"{small_queue_server}/health"
    wait_until(lambda: httpx.get(health, timeout=10).json()["queue_depth"] >= 3, "the second request queueing")
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="hatcat-divergence", messages=messages, max_tokens=2)
    assert "HATCAT_MAX_QUEUE" in refused.value.message
    running.close()
    waiter.join(timeout=300)
    assert results and results[0].choices[0].finish_reason in ("stop", "length")
