"""API key, CORS and an engine without a probe pack: the API served in-process by uvicorn on
loopback (sharing the already loaded model), checked with the real `openai` client."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace

import httpx
import openai
import pytest
import uvicorn

from hatcat.api import create_api
from hatcat.engine import Engine
from tests.support import free_port, wait_until

KEY = "test-key-123"
ORIGIN = "http://localhost:3000"


@pytest.fixture(scope="module")
def bare_server(engine: Engine) -> Iterator[str]:
    """A probe-less Engine over the shared model, with HATCAT_API_KEY and HATCAT_CORS_ORIGINS set."""
    settings = replace(engine.settings, api_key=KEY, cors_origins=(ORIGIN,))
    bare = Engine(settings, engine.loaded, engine.concepts)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_api(bare), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "the API server's start")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_v1_needs_the_bearer_key_and_health_stays_open(bare_server: str) -> None:
    assert httpx.get(f"{bare_server}/health").status_code == 200
    missing = httpx.get(f"{bare_server}/v1/models")
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    assert missing.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{bare_server}/v1", api_key="wrong", max_retries=0).models.list()
    # auth comes before parsing: an unauthenticated malformed body is still a 401
    assert (
        httpx.post(
            f"{bare_server}/v1/chat/completions", content=b"{", headers={"Content-Type": "application/json"}
        ).status_code
        == 401
    )
    ids = [m.id for m in openai.OpenAI(base_url=f"{bare_server}/v1", api_key=KEY, max_retries=0).models.list()]
    assert ids[0] == "hatcat-divergence"


def test_cors_allows_the_configured_origin_only(bare_server: str) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    allowed = httpx.options(f"{bare_server}/v1/chat/completions", headers={"Origin": ORIGIN, **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(f"{bare_server}/v1/chat/completions", headers={"Origin": "http://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers


def test_without_a_probe_pack_chat_works_and_says_monitoring_is_off(bare_server: str) -> None:
    client = openai.OpenAI(base_url=f"{bare_server}/v1", api_key=KEY, max_retries=0, timeout=120)
    prompt = [{"role": "user", "content": "Hello"}]
    answer = client.chat.completions.create(model="hatcat-divergence", messages=prompt, max_tokens=4, temperature=0)
    assert answer.choices[0].message.content
    assert answer.to_dict()["hatcat"]["monitoring"] is False
    chunks = [
        c.to_dict()
        for c in client.chat.completions.create(
            model="hatcat-divergence", messages=prompt, max_tokens=4, temperature=0, stream=True
        )
    ]
    metadata = [c["choices"][0]["delta"]["metadata"] for c in chunks if c["choices"]]
    assert metadata and all(m["monitoring"] is False and m["divergence"] is None for m in metadata)
    headers = {"Authorization": f"Bearer {KEY}"}
    for path, body in (("/v1/analyze", {"text": "hello"}), ("/v1/steering/add", {"concept": "Fear", "strength": 0.1})):
        refused = httpx.post(f"{bare_server}{path}", json=body, headers=headers)
        assert refused.status_code == 409 and "probe pack" in refused.json()["error"]["message"]
