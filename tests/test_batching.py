"""Continuous batching on the real model: a request inside a full batch of different-length prompts
(other settings, seeds, steering) gets the tokens and records it gets alone; requests join and
leave mid-batch; cancellation; the queue bound; and through the real `openai` client, eight
concurrent streams with different settings, one cancelled mid-way, the others complete."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch

from hatcat.api.prompt import build_prompt
from hatcat.batching import QueueFull, Scheduler
from hatcat.engine import Engine
from hatcat.generation import GenerationSettings
from hatcat.pipeline import MonitoredFinish, MonitoredToken, monitored_generation
from hatcat.steering import Steering
from tests.support import start_app, stop_app

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


def solo(engine: Engine, text: str, settings: GenerationSettings, steerings: list[Steering] = ()) -> list:
    """The single-stream path (no batch): `monitored_generation` under the engine lock."""
    with engine.exclusive():
        return list(
            monitored_generation(
                engine.model, engine.tokenizer, engine.monitor, engine.vectors, text, settings, steerings
            )
        )


def tokens(events: list) -> list[int]:
    return [e.step.token_id for e in events if isinstance(e, MonitoredToken)]


def records(events: list) -> list:
    return [e.record for e in events if isinstance(e, MonitoredToken)]


def collect_all(generations: list) -> list[list]:
    with ThreadPoolExecutor(len(generations)) as pool:
        return list(pool.map(list, generations))


@pytest.fixture(scope="module")
def scheduler(engine: Engine) -> Scheduler:
    """A scheduler of its own on the shared model (the engine's own batch stays untouched)."""
    return Scheduler(engine.model, engine.tokenizer, engine.exclusive, max_batch=8, max_queue=16)


def test_greedy_request_alone_and_in_a_full_batch_of_other_lengths_and_settings_is_identical(
    engine: Engine, scheduler: Scheduler
) -> None:
    if engine.loaded.dtype != torch.float32:
        pytest.skip("token identity under batching is a float32 property; this run is in " + str(engine.loaded.dtype))
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
    assert tokens(batched[0]) == tokens(alone)
    assert isinstance(batched[0][-1], MonitoredFinish) and batched[0][-1].finished.text == alone[-1].finished.text
    worst = 0.0
    for b, a in zip(records(batched[0]), records(alone)):
        assert (b.index, b.token) == (a.index, a.token)
        assert [c.concept for c in b.concepts] == [c.concept for c in a.concepts]
        worst = max([worst] + [abs(x.activation - y.activation) for x, y in zip(b.concepts, a.concepts)])
    assert worst <= RECORD_TOLERANCE, worst
    # every other row is its own solo run too: seeded sampling, its own max_tokens, per-row steering
    for (text, settings, steer), events in zip(others, batched[1:]):
        assert tokens(events) == tokens(solo(engine, text, settings, list(steer)))


def test_a_request_joins_a_running_batch_and_leaves_without_waiting(engine: Engine, scheduler: Scheduler) -> None:
    long = scheduler.submit(
        prompt(engine, QUESTIONS[2]),
        GenerationSettings(max_tokens=40, temperature=0),
        (),
        engine.monitor,
        engine.vectors,
    )
    first = [next(long) for _ in range(3)]  # the batch is running
    short_settings = GenerationSettings(max_tokens=3, temperature=0)
    short = list(scheduler.submit(prompt(engine, QUESTIONS[3]), short_settings, (), engine.monitor, engine.vectors))
    assert isinstance(short[-1], MonitoredFinish) and short[-1].finished.completion_tokens <= 3
    deadline = time.monotonic() + 10
    while scheduler.depth > 1 and time.monotonic() < deadline:  # its row is dropped right after its last event
        time.sleep(0.02)
    assert scheduler.depth == 1  # the short one left while the long one (30+ tokens to go) still runs
    rest = list(long)
    assert isinstance(rest[-1], MonitoredFinish)
    assert tokens(first + rest) == tokens(
        solo(engine, prompt(engine, QUESTIONS[2]), GenerationSettings(max_tokens=40, temperature=0))
    )
    assert tokens(short) == tokens(solo(engine, prompt(engine, QUESTIONS[3]), short_settings))


def test_a_cancelled_row_leaves_and_the_others_complete(engine: Engine, scheduler: Scheduler) -> None:
    settings = GenerationSettings(max_tokens=12, temperature=0.8, seed=5)
    generations = [
        scheduler.submit(prompt(engine, q), settings, (), engine.monitor, engine.vectors) for q in QUESTIONS[:4]
    ]
    flag = threading.Event()
    flagged = scheduler.submit(prompt(engine, QUESTIONS[4]), settings, (), engine.monitor, engine.vectors, cancel=flag)
    next(generations[1])
    generations[1].cancel()
    assert list(generations[1]) == []  # iteration ends at once
    next(flagged)
    flag.set()  # a request's cancel flag (the API sets it when the client goes away) ends it too
    assert list(flagged) == []
    done = collect_all([g for i, g in enumerate(generations) if i != 1])
    assert all(isinstance(events[-1], MonitoredFinish) for events in done)
    deadline = time.monotonic() + 30
    while scheduler.depth and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scheduler.depth == 0


def test_past_the_queue_bound_a_request_is_refused_with_429(engine: Engine) -> None:
    small = Scheduler(engine.model, engine.tokenizer, engine.exclusive, max_batch=1, max_queue=1)
    running = small.submit(
        prompt(engine, QUESTIONS[0]), GenerationSettings(max_tokens=500), (), engine.monitor, engine.vectors
    )
    next(running)  # admitted: the one batch slot is taken
    waiting = small.submit(
        prompt(engine, QUESTIONS[1]), GenerationSettings(max_tokens=2), (), engine.monitor, engine.vectors
    )
    with pytest.raises(QueueFull) as refused:
        small.submit(prompt(engine, QUESTIONS[2]), GenerationSettings(max_tokens=2), (), engine.monitor, engine.vectors)
    assert refused.value.status == 429 and "HATCAT_MAX_QUEUE" in str(refused.value)
    running.cancel()
    assert isinstance(list(waiting)[-1], MonitoredFinish)  # the waiting one got the slot


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
    time.sleep(5.0)  # the second request is now waiting in the queue
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="hatcat-divergence", messages=messages, max_tokens=2)
    assert "HATCAT_MAX_QUEUE" in refused.value.message
    running.close()
    waiter.join(timeout=300)
    assert results and results[0].choices[0].finish_reason in ("stop", "length")
