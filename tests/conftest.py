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
        TrainSettings(concepts=SMALL_PACK_CONCEPTS),
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


def start_app(env: dict[str, str], log_path: Path, prefix: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    """`python app.py` (after `prefix`, e.g. a privilege wrapper) with `env` on a free loopback port,
    its log in a file (a pipe nobody reads would block it once full); returns the process and its
    base URL once /health answers."""
    port = free_port()
    env = {**os.environ, "HATCAT_HOST": "127.0.0.1", "HATCAT_PORT": str(port), **env}
    log = log_path.open("w+")
    proc = subprocess.Popen(
        [*(prefix or []), sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.5)
    stop_app(proc)
    pytest.fail("app.py did not answer /health within 600 s")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def server(small_probe_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python app.py` with the small probe pack, serving on a free loopback port; yields its base URL."""
    folder = tmp_path_factory.mktemp("server")
    env = {"HATCAT_PROBE_PACK": str(small_probe_pack), "HATCAT_DB": str(folder / "hatcat.db")}
    proc, base = start_app(env, folder / "app.log")
    try:
        yield base
    finally:
        stop_app(proc)
