"""HATCAT_AUTO_TRAIN: the embedded model without its pack serves unmonitored, trains one in the
background (progress on /health), and hot-loads it when done.

The app runs with an empty probe folder (HATCAT_PROBES_DIR: the shipped pack is not there) and a
fresh cache folder that shares only the converted model; HATCAT_AUTO_TRAIN_LIMIT keeps the run to
two concepts so the whole path finishes in minutes.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from hatcat.config import Settings
from tests.support import start_app, stop_app

pytestmark = pytest.mark.slow


def test_model_without_a_pack_trains_one_in_the_background_and_hot_loads_it(tmp_path: Path) -> None:
    cache, probes = tmp_path / "cache", tmp_path / "probes"
    cache.mkdir()
    probes.mkdir()
    shared = Settings.from_env().cache_dir
    for name in ("converted", "gguf"):  # the converted model only: no token states, no packs
        if (shared / name).is_dir():
            (cache / name).symlink_to(shared / name)
    env = {
        "HATCAT_CACHE_DIR": str(cache),
        "HATCAT_PROBES_DIR": str(probes),
        "HATCAT_PROBE_PACK": "",
        "HATCAT_AUTO_TRAIN": "1",
        "HATCAT_AUTO_TRAIN_LIMIT": "2",
    }
    log = tmp_path / "app.log"
    proc, base = start_app(env, log)
    try:
        health = httpx.get(f"{base}/health", timeout=10).json()
        assert health["probe_pack"] is None and health["monitoring"] is False
        assert health["auto_train"]["state"] in ("queued", "training")

        reply = OpenAI(base_url=f"{base}/v1", api_key="none").chat.completions.create(
            model="hatcat-divergence", messages=[{"role": "user", "content": "Hello"}], max_tokens=4
        )
        assert reply.choices[0].message.content  # unmonitored generation while the pack trains

        phases, deadline = set(), time.monotonic() + 1200
        while time.monotonic() < deadline:
            health = httpx.get(f"{base}/health", timeout=10).json()
            phases.add(health["auto_train"].get("phase"))
            if health["auto_train"]["state"] == "failed":
                pytest.fail(
                    f"auto-train failed: {health['auto_train'].get('error')}; app log:\n{log.read_text()[-3000:]}"
                )
            if health["auto_train"]["state"] == "done":
                break
            time.sleep(1)
        else:
            pytest.fail(f"auto-train did not finish; app log:\n{log.read_text()[-3000:]}")
        assert health["monitoring"] is True and health["probes"] == 2
        assert "token states" in phases
        assert (cache / "packs" / "auto" / "gemma-3-270m").is_dir()
        analysis = httpx.post(f"{base}/v1/analyze", json={"text": "The band played all night."}, timeout=60).json()
        assert len(analysis["concepts"]) == 2
    finally:
        stop_app(proc)
