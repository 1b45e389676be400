"""HATCAT_AUTO_TRAIN: the embedded model without its pack serves unmonitored, trains one in the
background (progress on /health), and hot-loads it when done.

The app runs from a copy of the repository without `probes/` (the shipped pack removed), with a
fresh cache folder that shares only the converted model; HATCAT_AUTO_TRAIN_LIMIT keeps the run
to two concepts so the whole path finishes in a couple of minutes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from hatcat.config import Settings
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow


def _repo_without_pack(dest: Path) -> Path:
    dest.mkdir()
    for name in ("app.py", "hatcat", "views", "data"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest / name)
    return dest


def test_model_without_a_pack_trains_one_in_the_background_and_hot_loads_it(tmp_path: Path) -> None:
    repo = _repo_without_pack(tmp_path / "repo")
    cache = tmp_path / "cache"
    cache.mkdir()
    shared = Settings.from_env().cache_dir
    for name in ("converted", "gguf"):  # the converted model only: no token states, no packs
        if (shared / name).is_dir():
            (cache / name).symlink_to(shared / name)
    port = free_port()
    env = {
        **os.environ,
        "HATCAT_HOST": "127.0.0.1",
        "HATCAT_PORT": str(port),
        "HATCAT_CACHE_DIR": str(cache),
        "HATCAT_AUTO_TRAIN": "1",
        "HATCAT_AUTO_TRAIN_LIMIT": "2",
        "HATCAT_PROBE_PACK": "",
    }
    log = (tmp_path / "app.log").open("w+")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        health = _wait(lambda: httpx.get(f"{base}/health", timeout=5).json(), proc, log, 600)
        assert health["probe_pack"] is None and health["monitoring"] is False
        assert health["auto_train"]["state"] in ("queued", "training")

        reply = OpenAI(base_url=f"{base}/v1", api_key="none").chat.completions.create(
            model="hatcat-divergence", messages=[{"role": "user", "content": "Hello"}], max_tokens=4
        )
        assert reply.choices[0].message.content  # unmonitored generation while the pack trains

        seen_phases = set()

        def done() -> dict | None:
            h = httpx.get(f"{base}/health", timeout=5).json()
            seen_phases.add(h["auto_train"].get("phase"))
            assert h["auto_train"]["state"] != "failed", h["auto_train"]
            return h if h["auto_train"]["state"] == "done" else None

        health = _wait(done, proc, log, 900)
        assert health["monitoring"] is True and health["probes"] == 2
        assert "token states" in seen_phases or health["auto_train"]["seconds"] < 5
        assert (cache / "packs" / "auto" / "gemma-3-270m").is_dir()
        analysis = httpx.post(f"{base}/v1/analyze", json={"text": "The band played all night."}, timeout=60).json()
        assert len(analysis["concepts"]) == 2
    finally:
        proc.terminate()
        proc.wait(30)


def _wait(probe, proc: subprocess.Popen, log, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"app.py exited with {proc.returncode}:\n{log.read()[-3000:]}")
        try:
            if (value := probe()) is not None:
                return value
        except httpx.TransportError:
            pass
        time.sleep(1)
    log.seek(0)
    pytest.fail(f"timed out; app log:\n{log.read()[-3000:]}")
