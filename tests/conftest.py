"""Shared fixtures: the real embedded model, loaded once, and the real app on a loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hatcat.config import Settings
from hatcat.engine import SAFETY_MELD, Engine
from hatcat.training.run import TrainSettings, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Engine:
    """The embedded default model, loaded in-process (converted into the cache on first use)."""
    return Engine.from_settings(settings)


SMALL_PACK_CONCEPTS = ("Music", "Fear", "EmotionalState", "Anger", "Automobile", "Deception", "Lying")


@pytest.fixture(scope="session")
def small_probe_pack(engine: Engine, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A probe pack trained here, on the real model, for a few concepts (a parent-child pair among them)."""
    from hatcat.concepts import load_pack

    pack = load_pack(melds=[SAFETY_MELD])
    folder, _ = train(
        engine.loaded,
        pack,
        TrainSettings(concepts=SMALL_PACK_CONCEPTS, control_per_split=200),
        settings.cache_dir,
        tmp_path_factory.mktemp("pack"),
    )
    return folder


@pytest.fixture(scope="session")
def probed_engine(engine: Engine, small_probe_pack: Path) -> Engine:
    """The shared engine with the small pack hot-loaded."""
    engine.load_probes(small_probe_pack)
    return engine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_app(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `python app.py` to completion (for start-up failures)."""
    return subprocess.run(
        [sys.executable, "app.py"], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def server(small_probe_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python app.py` with the small probe pack, serving on a free loopback port; yields its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "HATCAT_HOST": "127.0.0.1",
        "HATCAT_PORT": str(port),
        "HATCAT_PROBE_PACK": str(small_probe_pack),
    }
    # The log goes to a file: a pipe nobody reads would block the server once it fills.
    log = (tmp_path_factory.mktemp("server") / "app.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"app.py exited with {proc.returncode}:\n{log.read()}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            pytest.fail("app.py did not answer /health within 600 s")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
