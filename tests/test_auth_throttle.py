"""A flood of wrong API keys costs the server almost nothing: `python app.py` with a users file on
loopback, a valid `openai` client streaming while 200 wrong keys arrive from one address."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import yaml

from hatcat.access import new_key
from tests.support import start_app, stop_app

pytestmark = pytest.mark.slow

FAILURES = 5  # HATCAT_AUTH_FAILURES (its default)
TOKENS = 128


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The app with one researcher key (the shipped pack); yields its base URL, the key and the key's id."""
    folder = tmp_path_factory.mktemp("throttle")
    key_id, key, stored = new_key()
    (folder / "users.yaml").write_text(
        yaml.safe_dump({"users": {"rex": {"role": "researcher", "keys": {key_id: stored}}}})
    )
    env = {
        "HATCAT_USERS_FILE": str(folder / "users.yaml"),
        "HATCAT_DB": str(folder / "hatcat.db"),
        "HATCAT_AUTH_FAILURES": str(FAILURES),
        "HATCAT_RATE_LIMIT": "0",
    }
    proc, base = start_app(env, folder / "app.log")
    try:
        yield {"base": base, "key": key, "key_id": key_id}
    finally:
        stop_app(proc)


def stream_rate(base: str, key: str, started: threading.Event | None = None) -> float:
    """Tokens per second of one streamed answer of TOKENS tokens, from its first token to its last."""
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=300)
    stream = client.chat.completions.create(
        model="hatcat-divergence",
        messages=[{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}],
        max_tokens=TOKENS,
        temperature=0,
        stream=True,
        extra_body={"min_tokens": TOKENS},
    )
    times = []
    for chunk in stream:
        delta = chunk.to_dict()["choices"][0]["delta"] if chunk.choices else {}
        if delta.get("metadata", {}).get("token_index") is not None:
            times.append(time.perf_counter())
            if started is not None:
                started.set()
    assert len(times) == TOKENS
    return (len(times) - 1) / (times[-1] - times[0])


def wrong_keys(base: str, key_id: str, count: int, local: str = "127.0.0.1") -> list[httpx.Response]:
    """`count` requests, one after another from address `local`, each with another wrong secret for `key_id`."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address=local), timeout=120) as client:
        return [
            client.get(
                f"{base}/v1/models", headers={"Authorization": f"Bearer hck_{key_id}_wrong-secret-{i:04d}-xxxxxx"}
            )
            for i in range(count)
        ]


def test_wrong_keys_get_401_then_429_and_the_valid_stream_keeps_its_pace(guarded: dict) -> None:
    base, key, key_id = guarded["base"], guarded["key"], guarded["key_id"]
    stream_rate(base, key)  # warm-up (and the key's one argon2 verification)
    before = stream_rate(base, key)
    started, rates = threading.Event(), []
    streaming = threading.Thread(target=lambda: rates.append(stream_rate(base, key, started)))
    streaming.start()
    assert started.wait(timeout=300)
    flood = wrong_keys(base, key_id, 200)
    streaming.join(timeout=300)
    unloaded = (before + stream_rate(base, key)) / 2  # unloaded runs either side: the machine's drift cancels
    codes = [r.status_code for r in flood]
    assert codes == [401] * FAILURES + [429] * (200 - FAILURES)
    assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in flood[FAILURES:])
    assert flood[-1].json()["error"]["code"] == "auth_throttled"
    assert rates and rates[0] >= 0.8 * unloaded, (rates, unloaded)
    # the key id is throttled from any address; another key id from a fresh address is not
    assert [r.status_code for r in wrong_keys(base, key_id, 1, local="127.0.0.2")] == [429]
    assert [r.status_code for r in wrong_keys(base, "0badc0de", 1, local="127.0.0.2")] == [401]
    with httpx.Client(timeout=60) as client:  # the valid key, from the throttled address, still passes
        assert client.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def wrong_logins(base: str, count: int, local: str) -> list[httpx.Response]:
    """`count` workbench logins (Gradio's form), one after another from address `local`, each with a wrong password."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address=local), timeout=120) as client:
        return [client.post(f"{base}/login", data={"username": "rex", "password": f"nope-{i}"}) for i in range(count)]


def test_wrong_workbench_logins_are_throttled_per_address_with_the_api_keys(guarded: dict) -> None:
    tried = wrong_logins(guarded["base"], FAILURES + 3, local="127.0.0.3")
    assert [r.status_code for r in tried] == [400] * FAILURES + [429] * 3
    assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in tried[FAILURES:])
    assert tried[-1].json()["error"]["code"] == "auth_throttled"
    # one window per address for both doors: a wrong API key from there is refused before hashing too
    assert [r.status_code for r in wrong_keys(guarded["base"], "5eed5eed", 1, local="127.0.0.3")] == [429]
    assert [r.status_code for r in wrong_logins(guarded["base"], 1, local="127.0.0.4")] == [400]
