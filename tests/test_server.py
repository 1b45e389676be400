"""The real app on a loopback port answers /health and /v1/models (checked with the openai client)."""

from __future__ import annotations

import httpx
import openai


def test_health_reports_the_loaded_model(server: str) -> None:
    body = httpx.get(f"{server}/health", timeout=10).json()
    assert body["status"] == "ok"
    assert body["model"] == "embedded:gemma-3-270m"
    assert body["layers"] == 18
    assert body["device"].split(":")[0] in {"cpu", "cuda", "mps"}
    assert body["dtype"] in {"bfloat16", "float32"}
    assert body["load_seconds"] > 0


def test_models_list_offers_hatcat_divergence_to_openai_clients(server: str) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    ids = [model.id for model in client.models.list()]
    assert "hatcat-divergence" in ids


def test_workbench_page_is_mounted_at_root(server: str) -> None:
    page = httpx.get(f"{server}/", timeout=10)
    assert page.status_code == 200
    assert "<html" in page.text.lower()
