"""The OpenAI-compatible API of `python app.py` (small probe pack), through the real `openai` client
and plain HTTP on loopback: chat (stream and not), metadata, errors, fairness, disconnects,
steering, analysis, packs, metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from hatcat.api import create_api
from hatcat.engine import Engine
from tests.support import serve, wait_until

PROMPT = [{"role": "user", "content": "Tell me about your dog."}]
DIVERGENCE_KEYS = {"concept", "layer", "activation", "text_similarity", "divergence"}


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


def stream_chunks(client: openai.OpenAI, **kwargs) -> list[dict]:
    return [
        chunk.to_dict()
        for chunk in client.chat.completions.create(model="hatcat-divergence", messages=PROMPT, stream=True, **kwargs)
    ]


def token_text(chunks: list[dict]) -> str:
    """The generated text: the content of the per-token chunks (not the analysis line)."""
    return "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in chunks
        if c["choices"] and c["choices"][0]["delta"]["metadata"].get("token_index") is not None
    )


def assert_error(response: httpx.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"]
    return error


def test_models_list_hatcat_divergence_and_the_loaded_probe_pack(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert "hatcat-divergence" in models
    packs = [m for m in models if m.startswith("gemma-3-270m_")]
    assert any(models[m].to_dict()["loaded"] for m in packs)


def test_non_stream_answer_has_text_usage_and_per_token_divergence(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="hatcat-divergence", messages=PROMPT, max_tokens=6, temperature=0, stream=False
    )
    assert answer.object == "chat.completion" and abs(answer.created - time.time()) < 300
    assert answer.choices[0].message.content and answer.choices[0].finish_reason in {"stop", "length"}
    assert (
        answer.usage.completion_tokens <= 6
        and answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    )
    report = answer.to_dict()["hatcat"]
    assert report["monitoring"] is True and report["analysis_line"].startswith("**Analysis**")
    assert 1 <= len(report["tokens"]) <= 6
    for token in report["tokens"]:
        assert set(token["divergence"]) == {"max_divergence", "top_divergences"}
        assert all(set(d) == DIVERGENCE_KEYS for d in token["divergence"]["top_divergences"])
        assert len(token["divergence"]["top_divergences"]) <= 10


def test_every_streamed_chunk_carries_metadata_and_the_analysis_comes_last(client: openai.OpenAI) -> None:
    chunks = stream_chunks(client, max_tokens=6, temperature=0)
    with_choices = [c for c in chunks if c["choices"]]
    assert all("metadata" in c["choices"][0]["delta"] for c in with_choices)
    assert all("steering" in c["choices"][0]["delta"]["metadata"] for c in with_choices)
    tokens = [c for c in with_choices if c["choices"][0]["delta"]["metadata"].get("token_index") is not None]
    assert 1 <= len(tokens) <= 6
    for chunk in tokens:
        divergence = chunk["choices"][0]["delta"]["metadata"]["divergence"]
        assert isinstance(divergence["max_divergence"], float)
        assert all(set(d) == DIVERGENCE_KEYS for d in divergence["top_divergences"])
    analysis, final = with_choices[-2], with_choices[-1]
    assert analysis["choices"][0]["delta"]["content"].startswith("\n\n**Analysis**")
    assert "mean_divergence" in analysis["choices"][0]["delta"]["metadata"]["analysis"]
    assert final["choices"][0]["finish_reason"] in {"stop", "length"} and final["usage"]["completion_tokens"] <= 6
    # the same request, not streamed, says the same
    answer = client.chat.completions.create(model="hatcat-divergence", messages=PROMPT, max_tokens=6, temperature=0)
    assert token_text(chunks) == answer.choices[0].message.content


def test_stream_ends_with_done_on_the_wire(server: str) -> None:
    body = {"model": "hatcat-divergence", "messages": PROMPT, "stream": True, "max_tokens": 4, "temperature": 0}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        ({"messages": []}, 400, "messages", ["at least 1"]),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role", ["'user'"]),
        ({"messages": PROMPT, "max_tokens": 0}, 400, "max_tokens", ["greater than or equal to 1"]),
        ({"messages": PROMPT, "max_tokens": 10**6}, 400, "max_tokens", ["limit"]),
        ({"messages": PROMPT, "temperature": -0.5}, 400, "temperature", ["greater than or equal to 0"]),
        ({"messages": PROMPT, "top_p": 0}, 400, "top_p", []),
        ({"messages": PROMPT, "max_tokens": 4, "min_tokens": 5}, 400, "min_tokens", ["max_tokens=4"]),
        ({"messages": PROMPT, "model": "gpt-4"}, 404, "model", ["unknown model: gpt-4"]),
        ({"messages": [{"role": "user"}]}, 400, "messages.0.user.content", ["Field required"]),
        ({"messages": [{"role": "user", "content": "  "}]}, 400, "messages.0.user.content", ["pattern"]),
    ],
    ids=[
        "empty-messages",
        "unknown-role",
        "zero-max-tokens",
        "max-tokens-above-limit",
        "negative-temperature",
        "zero-top-p",
        "min-tokens-above-max-tokens",
        "unknown-model",
        "user-message-without-content",
        "user-message-of-spaces",
    ],
)
def test_bad_chat_requests_get_an_openai_error(
    server: str, body: dict, status: int, param: str, words: list[str]
) -> None:
    error = assert_error(httpx.post(f"{server}/v1/chat/completions", json=body, timeout=30), status, *words)
    assert error["param"] == param


def test_openai_client_raises_on_bad_requests(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="hatcat-divergence", messages=PROMPT, max_tokens=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=PROMPT, max_tokens=4)


def test_prompt_longer_than_the_context_is_a_400(server: str) -> None:
    body = {"messages": [{"role": "user", "content": "word " * 40_000}], "max_tokens": 4}
    error = assert_error(httpx.post(f"{server}/v1/chat/completions", json=body, timeout=120), 400, "context")
    assert error["code"] == "context_length_exceeded"


def test_malformed_json_and_wrong_content_type_are_400s(server: str) -> None:
    url = f"{server}/v1/chat/completions"
    assert (
        assert_error(
            httpx.post(url, content=b'{"messages": [', headers={"Content-Type": "application/json"}),
            400,
            "not valid JSON",
        )["code"]
        == "json_invalid"
    )
    assert (
        assert_error(httpx.post(url, content=b"hello", headers={"Content-Type": "text/plain"}), 400, "must be JSON")[
            "code"
        ]
        == "unsupported_content_type"
    )


def test_unknown_routes_and_methods_answer_in_the_error_shape(server: str) -> None:
    assert_error(httpx.get(f"{server}/v1/no-such-route"), 404, "no route")
    assert assert_error(httpx.post(f"{server}/v1/models"), 405, "not allowed").get("code") == "method_not_allowed"
    assert httpx.put(f"{server}/v1/chat/completions").headers["allow"] == "POST"


@pytest.fixture(scope="module")
def fp32_client(fp32_engine: Engine) -> Iterator[openai.OpenAI]:
    """The API over the float32 engine, in-process on loopback: batch identity is a float32 property."""
    with serve(create_api(fp32_engine)) as base:
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)


def test_eight_concurrent_seeded_streams_each_match_their_solo_run(fp32_client: openai.OpenAI) -> None:
    client = fp32_client
    seeds = list(range(1, 9))
    kwargs = {"max_tokens": 5, "temperature": 1.0}
    solo = {seed: token_text(stream_chunks(client, seed=seed, **kwargs)) for seed in seeds}
    barrier = threading.Barrier(len(seeds))

    def run(seed: int) -> str:
        barrier.wait()
        return token_text(stream_chunks(client, seed=seed, **kwargs))

    with ThreadPoolExecutor(len(seeds)) as pool:
        together = dict(zip(seeds, pool.map(run, seeds)))
    assert together == solo
    assert len(set(solo.values())) > 1  # the seeds do differ


def test_health_answers_during_a_generation_and_a_disconnect_frees_the_model_at_once(
    server: str, client: openai.OpenAI
) -> None:
    body = {
        "model": "hatcat-divergence",
        "messages": PROMPT,
        "stream": True,
        "max_tokens": 2048,
        "temperature": 1.0,
        "seed": 3,
    }
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
        health = httpx.get(f"{server}/health", timeout=10).json()  # answered while the stream runs
        assert health["queue_depth"] >= 1
    # the client went away mid-stream: its row leaves the batch (the 2048 tokens would take minutes)
    depth = f"{server}/health"
    wait_until(lambda: httpx.get(depth, timeout=10).json()["queue_depth"] == 0, "the abandoned row leaving", 60)
    answer = client.chat.completions.create(model="hatcat-divergence", messages=PROMPT, max_tokens=4, temperature=0)
    assert answer.choices[0].message.content


def test_steering_routes_per_session(server: str, client: openai.OpenAI) -> None:
    v1 = f"{server}/v1/steering"
    added = httpx.post(f"{v1}/add", json={"concept": "Fear", "strength": 0.2, "session_id": "s1"})
    assert added.status_code == 200 and added.json()["concept"] == "Fear"
    assert [s["concept"] for s in httpx.get(f"{v1}/list", params={"session_id": "s1"}).json()["steerings"]] == ["Fear"]
    assert httpx.get(f"{v1}/list", params={"session_id": "other"}).json()["steerings"] == []
    updated = httpx.patch(f"{v1}/update/Fear", json={"strength": 0.3, "session_id": "s1"})
    assert updated.status_code == 200 and updated.json()["strength"] == 0.3
    chunks = stream_chunks(client, max_tokens=4, temperature=0, extra_body={"session_id": "s1"})
    steering = chunks[0]["choices"][0]["delta"]["metadata"]["steering"]
    assert steering["active"] and steering["steerings"][0]["concept"] == "Fear"
    assert httpx.delete(f"{v1}/remove/Fear", params={"session_id": "s1"}).status_code == 200
    assert_error(httpx.delete(f"{v1}/remove/Fear", params={"session_id": "s1"}), 404, "Fear")
    assert_error(httpx.post(f"{v1}/add", json={"concept": "NoSuchConcept", "strength": 0.1}), 404, "NoSuchConcept")
    assert_error(httpx.patch(f"{v1}/update/NoSuchConcept", json={"strength": 0.1}), 404, "NoSuchConcept")
    assert_error(httpx.post(f"{v1}/add", json={"concept": "Fear", "strength": 99}), 400)
    httpx.post(f"{v1}/add", json={"concept": "Anger", "strength": -0.1, "session_id": "s2"})
    assert httpx.delete(f"{v1}/clear", params={"session_id": "s2"}).json() == {"session_id": "s2", "removed": 1}


def test_analyze_scores_a_given_text(server: str) -> None:
    text = "She was terrified of the dark road ahead."
    answer = httpx.post(f"{server}/v1/analyze", json={"text": text, "top_k": 3}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["tokens"]) >= 8 and all(
        set(t["divergence"]) == {"max_divergence", "top_divergences"} for t in body["tokens"]
    )
    assert len(body["concepts"]) == 3 and body["summary_line"].startswith("Analysis")
    asked = httpx.post(f"{server}/v1/analyze", json={"text": text, "concepts": ["Fear", "Music"]}, timeout=60).json()
    stats = {c["concept"]: c for c in asked["concepts"]}
    assert set(stats) == {"Fear", "Music"}
    assert all(c["max_activation"] >= c["mean_activation"] for c in stats.values())
    assert_error(
        httpx.post(f"{server}/v1/analyze", json={"text": text, "concepts": ["NoSuchConcept"]}), 404, "NoSuchConcept"
    )
    assert_error(httpx.post(f"{server}/v1/analyze", json={"text": ""}), 400)


def test_concept_and_probe_pack_routes(server: str) -> None:
    packs = httpx.get(f"{server}/v1/concept-packs").json()["data"]
    pack_id = packs[0]["id"]
    detail = httpx.get(f"{server}/v1/concept-packs/{pack_id}").json()
    assert detail["concepts"] == sum(len(ids) for ids in detail["concept_ids_by_layer"].values())
    assert httpx.get(f"{server}/v1/concept-packs/{pack_id}/concepts/Fear").json()["parents"] == ["EmotionalState"]
    assert_error(httpx.get(f"{server}/v1/concept-packs/nope"), 404, "nope")
    probe_packs = httpx.get(f"{server}/v1/probe-packs").json()["data"]
    loaded = next(p for p in probe_packs if p["loaded"])
    assert loaded["concepts"] == 7
    assert httpx.get(f"{server}/v1/probe-packs/{loaded['id']}").json()["manifest"]["tap_layer"] == loaded["tap_layer"]
    assert_error(httpx.get(f"{server}/v1/probe-packs/nope"), 404, "nope")


def test_metrics_expose_requests_latency_tokens_queue_and_divergence(server: str, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="hatcat-divergence", messages=PROMPT, max_tokens=4, temperature=0)
    text = httpx.get(f"{server}/metrics").text
    for name in (
        'hatcat_requests_total{method="POST",route="/v1/chat/completions",status="200"}',
        "hatcat_request_duration_seconds_bucket",
        "hatcat_tokens_generated_total",
        "hatcat_tokens_per_second",
        "hatcat_queue_depth",
        "hatcat_token_max_divergence_bucket",
    ):
        assert name in text
