"""Scale-out on real Ray (local mode, one cluster for the module) and a real `redis-server`: the API
behind `hatcat.serve_ray` with two model replicas and the workbench replica, through the real `openai`
client, `gradio_client` and plain HTTP, and the corpus CLI on Ray Data joining the same cluster.
Uses the shipped probe pack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import openai
import pyarrow.parquet as pq
import pytest

from hatcat.config import Settings
from tests.support import free_port

ray = pytest.importorskip("ray", reason="requirements-scale.txt (.ci/run installs it)")

pytestmark = pytest.mark.slow

PROMPT = [{"role": "user", "content": "Tell me about your dog."}]
REPLICA = "x-hatcat-replica"
# /v1/analyze and the corpus job batch the texts differently: fp32 sums may be reordered (records
# round to 4-6 decimals); bf16 rounds states to 3 significant digits
TOLERANCE = {"float32": 2e-4, "bfloat16": 2e-2}


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray cluster for the module (4 logical CPUs on the 2 real ones: replicas, actors and
    Ray Data's tasks take fractions); yields its address for drivers that join it."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    context = ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    try:
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def served(cluster: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`hatcat.serve_ray` with two model replicas and the workbench, steerings in Redis; yields the base URL."""
    from ray import serve

    from hatcat.serve_ray import Scale, deploy

    port = free_port()
    db = tmp_path_factory.mktemp("serve") / "hatcat.db"
    settings = replace(Settings.from_env(), host="127.0.0.1", port=port, session_store=redis_url, db=str(db))
    deploy(settings, Scale(replicas=2, workbench=True))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def client(served: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0, timeout=300)


def chat(base: str, **body) -> httpx.Response:
    payload = {"model": "hatcat-divergence", "messages": PROMPT, "max_tokens": 8, "temperature": 0, **body}
    return httpx.post(f"{base}/v1/chat/completions", json=payload, timeout=300)


def corpus_cli(job: str, source: Path, out: Path, cluster: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m hatcat.corpus JOB` joining the module's cluster; asserts it succeeded."""
    run = subprocess.run(
        [sys.executable, "-m", "hatcat.corpus", job, "--input", str(source), "--output", str(out), "--address", cluster]
        + list(args),
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_eight_concurrent_streams_complete_with_divergence_metadata_on_both_replicas(client: openai.OpenAI) -> None:
    def one(i: int) -> tuple[str, list[dict]]:
        raw = client.chat.completions.with_raw_response.create(
            model="hatcat-divergence", messages=PROMPT, max_tokens=12, seed=i, stream=True
        )
        return raw.headers[REPLICA], [chunk.to_dict() for chunk in raw.parse()]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    for _, chunks in answers:
        tokens = [
            c for c in chunks if c["choices"] and c["choices"][0]["delta"]["metadata"].get("token_index") is not None
        ]
        # every token carries its divergence metadata; under the shipped pack's family-wise firing rule most
        # tokens of ordinary text report no concept, so the list may be empty
        divergences = [c["choices"][0]["delta"]["metadata"]["divergence"] for c in tokens]
        assert tokens and all(isinstance(d["top_divergences"], list) and "max_divergence" in d for d in divergences)
        assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert len({replica for replica, _ in answers}) == 2  # the load was spread over both replicas


def test_a_sessions_requests_on_different_replicas_see_the_same_steering(served: str) -> None:
    added = httpx.post(
        f"{served}/v1/steering/add", json={"concept": "Music", "strength": 0.6, "session_id": "ada"}, timeout=60
    )
    assert added.status_code == 200, added.text
    plain = chat(served, session_id="nobody").json()["choices"][0]["message"]["content"]
    by_replica: dict[str, dict] = {}
    for _ in range(16):  # until both replicas answered for the session
        answer = chat(served, session_id="ada")
        assert answer.status_code == 200, answer.text
        by_replica[answer.headers[REPLICA]] = answer.json()
        if len(by_replica) == 2:
            break
    assert len(by_replica) == 2, "the router sent every request to one replica"
    texts = {a["choices"][0]["message"]["content"] for a in by_replica.values()}
    assert len(texts) == 1 and texts != {plain}  # greedy: the same steered text on both, not the plain one
    for answer in by_replica.values():
        assert [s["concept"] for s in answer["hatcat"]["steering"]["steerings"]] == ["Music"]
    cleared = httpx.request("DELETE", f"{served}/v1/steering/clear", params={"session_id": "ada"}, timeout=60)
    assert cleared.json()["removed"] == 1


def test_errors_and_routes_are_the_apps_own(served: str) -> None:
    unknown = chat(served, model="no-such-model")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert httpx.get(f"{served}/v1/nope", timeout=60).json()["error"]["code"] == "unknown_route"
    too_big = httpx.post(f"{served}/v1/analyze", content=b"x" * 1_100_000, timeout=60)
    assert too_big.status_code == 413
    health = httpx.get(f"{served}/health", timeout=60)
    assert health.json()["status"] == "ok" and health.headers[REPLICA].startswith("SERVE_REPLICA::hatcat#Model#")
    assert "hatcat_requests_total" in httpx.get(f"{served}/metrics", timeout=60).text


def test_the_workbench_is_served_by_its_own_replica_queue_included(served: str) -> None:
    from gradio_client import Client

    page = httpx.get(f"{served}/", timeout=120)
    assert page.status_code == 200 and page.headers[REPLICA].startswith("SERVE_REPLICA::hatcat#Workbench#")
    trace = Client(f"{served}/", verbose=False).predict(
        "Tell me about music.", 6, 0, 0, "divergence", api_name="/monitor"
    )
    assert "hc-tok" in trace[0]  # the monitored answer, through Gradio's queue (join, then the data stream)


def test_corpus_cli_scores_2000_texts_as_the_api_does(cluster: str, served: str, tmp_path: Path) -> None:
    subjects = ["my dog", "the violin", "a thunderstorm", "the tax office", "her old car", "a lie he told", "the war"]
    moods = ["I was afraid of", "We laughed about", "Nobody trusted", "She sang about", "They argued over"]
    texts = [f"{moods[n % 5]} {subjects[n % 7]} on day {n}." for n in range(2000)]
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"id": f"t{n}", "text": t}) + "\n" for n, t in enumerate(texts)))
    out = tmp_path / "scores.parquet"
    concepts = "Music,Fear,Deception"
    run = corpus_cli("analyze", source, out, cluster, "--concepts", concepts)
    assert "wrote 2000 analyses" in run.stderr
    rows = pq.read_table(out).to_pylist()
    assert [r["id"] for r in rows] == [f"t{n}" for n in range(2000)] and [r["text"] for r in rows] == texts
    sample = [0, 1, 777, 1500, 1999]
    answer = httpx.post(
        f"{served}/v1/analyze", json={"input": [texts[i] for i in sample], "concepts": concepts.split(",")}, timeout=300
    ).json()
    tolerance = TOLERANCE[httpx.get(f"{served}/health", timeout=60).json()["dtype"]]
    for i, api in zip(sample, answer["data"]):
        row = rows[i]
        assert row["tokens"] == [t["token"] for t in api["tokens"]]
        assert abs(row["max_divergence"] - api["summary"]["max_divergence"]) <= tolerance
        for mine, theirs in zip(row["concepts"], api["concepts"], strict=True):
            assert mine["concept"] == theirs["concept"]
            assert all(abs(mine[k] - theirs[k]) <= tolerance for k in mine if k not in ("concept", "layer"))


def test_corpus_extract_writes_pooled_states_a_probe_fits_on_at_the_driver(cluster: str, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    from hatcat.corpus import read_states

    music = ["The violin solo", "Her piano sonata", "The choir's hymn", "A jazz trumpet riff", "The drummer's beat"]
    food = ["The onion soup", "Her apple pie", "The roast chicken", "A bowl of rice", "The baker's bread"]
    endings = ["filled the evening.", "was all anyone talked about.", "came at the end of the day.", "was new to me."]
    texts = [f"{subject} {end}" for end in endings for subject in music + food]
    labels = [int(i % 10 < 5) for i in range(len(texts))]
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps(t) + "\n" for t in texts))
    out = tmp_path / "states.parquet"
    corpus_cli("extract", source, out, cluster, "--layer", "6")
    ids, states = read_states(out, "mean")
    assert ids == [str(n) for n in range(1, len(texts) + 1)] and states.shape[0] == len(texts)
    assert pq.read_table(out).column("text").to_pylist() == texts
    # the fit stays on the driver: three endings to train on, the fourth held out
    probe = LogisticRegression(max_iter=2000).fit(states[:30], labels[:30])
    assert probe.score(states[30:], labels[30:]) >= 0.9


def test_a_replica_killed_mid_stream_ends_the_stream_with_an_error_event_and_the_next_request_succeeds(
    served: str,
) -> None:
    payload = {"model": "hatcat-divergence", "messages": PROMPT, "max_tokens": 200, "stream": True}
    events: list[str] = []
    with httpx.stream("POST", f"{served}/v1/chat/completions", json=payload, timeout=300) as stream:
        replica = stream.headers[REPLICA]
        for line in stream.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line.removeprefix("data: "))
            if len(events) == 3:  # a few tokens in: the replica that streams them dies
                ray.kill(ray.get_actor(replica, namespace="serve"))
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "replica_failed" and "mid-stream" in error["message"]
    assert len(events) < 200  # it ended early, with the error, not after the full answer
    after = chat(served)
    assert after.status_code == 200 and after.headers[REPLICA] != replica
