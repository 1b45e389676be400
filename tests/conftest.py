"""Shared fixtures: the real embedded model, loaded once, and the real app on a loopback port.

The caller's `HATCAT_*` settings are cleared at import, before any Settings are read: each test
sets what it needs. Tests that need the model are `slow` (`pytest -m "not slow"` runs the model-free tier): those with
the `engine` or `server` fixture in their closure are marked here, the few that load a model or start
the app themselves carry the mark in their file. No fixture changes an engine another test sees: `probed_engine` is its own Engine on the shared model.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hatcat.config import Settings
from hatcat.engine import Engine
from tests.support import start_app, start_redis, stop_app, train_small_pack

for _name in [name for name in os.environ if name.startswith("HATCAT_")]:
    del os.environ[_name]

MODEL_FIXTURES = {"engine", "server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Engine:
    """The embedded default model, loaded in-process (converted into the cache on first use)."""
    return Engine.from_settings(settings)


@pytest.fixture(scope="session")
def small_probe_pack(engine: Engine, settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A probe pack trained here, on the real model, for a few concepts (a parent-child pair among them)."""
    return train_small_pack(engine.loaded, settings.cache_dir, tmp_path_factory.mktemp("pack"))


@pytest.fixture(scope="session")
def probed_engine(engine: Engine, small_probe_pack: Path) -> Engine:
    """An Engine of its own on the shared model, with the small pack loaded (the `engine` fixture keeps its pack)."""
    probed = Engine(engine.settings, engine.loaded, engine.concepts)
    probed.load_probes(small_probe_pack)
    return probed


@pytest.fixture(scope="session")
def fp32_engine(engine: Engine, small_probe_pack: Path) -> Engine:
    """An Engine of its own on a float32 copy of the model, with the small pack: token identity under
    batching is a float32 property, whatever dtype the CPU rule picked for the shared model."""
    model = copy.deepcopy(engine.model).float()
    own = Engine(engine.settings, replace(engine.loaded, model=model, dtype=torch.float32), engine.concepts)
    own.load_probes(small_probe_pack)
    return own


@pytest.fixture(scope="session")
def server(small_probe_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python app.py` with the small probe pack (and a record store of its own), serving on a free
    loopback port; yields its base URL."""
    folder = tmp_path_factory.mktemp("server")
    proc, base = start_app(
        {"HATCAT_PROBE_PACK": str(small_probe_pack), "HATCAT_DB": str(folder / "hatcat.db")}, folder / "app.log"
    )
    try:
        yield base
    finally:
        stop_app(proc)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `redis-server` of its own (Debian's) on a free loopback port; yields its URL. Skipped, with
    its reason, without Debian's redis-server or the `redis` client (requirements-scale.txt)."""
    if shutil.which("redis-server") is None:
        pytest.skip("Debian's redis-server is not installed (apt-get install redis-server; .ci/run does)")
    pytest.importorskip("redis", reason="pip install -r requirements-scale.txt (.ci/run does)")
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
