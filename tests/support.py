"""What tests and experiments share: a free loopback port, `python app.py` started and stopped, the
small probe pack trained on the real model. Importing it loads no torch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from hatcat.paths import ROOT, SAFETY_MELD

if TYPE_CHECKING:
    from hatcat.model import LoadedModel

# a few concepts, a parent-child pair among them
SMALL_PACK = ("Music", "Fear", "EmotionalState", "Anger", "Automobile", "Deception", "Lying")


def run_main(main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """A command's `main(argv)` in this process, without an interpreter start-up: (exit status, stderr)."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    return code, capsys.readouterr().err


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Wait for a state (a queue depth, a flag) under a generous timeout; fails naming `what`. It polls,
    so the test depends on the state being reached, not on how long that takes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.01)


def app_env(env: dict[str, str]) -> dict[str, str]:
    """This process's environment without the caller's `HATCAT_*` settings, and `env` on top."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("HATCAT_")}, **env}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_small_pack(loaded: LoadedModel, cache_dir: Path, out: Path) -> Path:
    """The SMALL_PACK concepts (with the safety meld) trained on `loaded` into `out`."""
    from hatcat.concepts import load_pack  # here, so that experiments that only start the app stay light
    from hatcat.training.run import TrainSettings, train

    folder, _ = train(
        loaded,
        load_pack(melds=[SAFETY_MELD]),
        TrainSettings(concepts=SMALL_PACK, k_texts=2, control_per_split=200),
        cache_dir,
        out,
    )
    return folder


@contextmanager
def serve(app: object) -> Iterator[str]:
    """An ASGI app served in-process by uvicorn on a free loopback port; yields its base URL."""
    import uvicorn  # here: importing this module stays light

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), "uvicorn start", timeout=60)
        if not server.started:
            raise RuntimeError(f"uvicorn did not start on port {port} (see its log above)")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def run_app(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `python app.py` to completion (for start-up failures)."""
    return subprocess.run(
        [sys.executable, "app.py"],
        cwd=ROOT,
        env=app_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> float:
    """Poll `url` until it answers 200; fail early when `proc` dies. Returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:] if log else ""
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered; log tail:\n{tail}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s")


def start_app(
    env: dict[str, str], log: Path, timeout: float = 600, prefix: list[str] | None = None
) -> tuple[subprocess.Popen, str]:
    """`python app.py` on a free loopback port (`env` on top of `app_env`), its output in `log`,
    behind `prefix` (e.g. a privilege wrapper) when given; returns (process, base URL) once `/health` answers."""
    port = free_port()
    full = app_env({"HATCAT_HOST": "127.0.0.1", "HATCAT_PORT": str(port), **env})
    with log.open("w") as out:  # a file, not a pipe: a pipe nobody reads blocks the server once it fills
        proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "app.py"], cwd=ROOT, env=full, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/health", timeout, proc, log)
    except (RuntimeError, TimeoutError):
        stop_app(proc)
        raise
    return proc, base


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tiny_probe_pack(
    folder: Path, hidden: int = 8, layer: int = 3, model: str = "m", concept_pack: tuple[str, str] = ("p", "x")
) -> Path:
    """A valid three-concept probe pack (Music, Deception, Fear) with random weights, for model-free tests;
    `concept_pack`: the (id, checksum) it says it was trained on."""
    import torch

    from hatcat.probes import save_pack

    concepts = ["Music", "Deception", "Fear"]
    gen = torch.Generator().manual_seed(0)
    weights = {
        side: (torch.randn(3, hidden, generator=gen), torch.randn(3, generator=gen), torch.tensor([0.4, 0.5, 0.6]))
        for side in ("activation", "text")
    }
    m = {"layer": 1, "f1": 0.8, "auroc": 0.9, "precision": 0.8, "recall": 0.8, "threshold": 0.5, "n_pos": 4, "n_neg": 4}
    per = {c: dict(m) for c in concepts}
    metrics = {
        "per_concept": per,
        "per_layer": {"1": {"mean_f1": 0.8, "mean_auroc": 0.9, "n": 3}},
        "text": {"per_concept": per, "per_layer": {}},
    }
    manifest = {
        "model": model,
        "hidden_size": hidden,
        "tap_layer": layer,
        "pooling": "last",
        "concept_pack": {"id": concept_pack[0], "checksum": concept_pack[1]},
        "concepts": concepts,
        "divergence_scale": [1.0] * len(concepts),
    }
    return save_pack(folder, manifest, weights, metrics)


def start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    """Debian's `redis-server` on a free loopback port, no persistence; returns (process, URL) once it answers."""
    port = free_port()
    options = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)]
    proc = subprocess.Popen(["redis-server", *options], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.perf_counter() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, url
        except OSError:
            if proc.poll() is not None or time.perf_counter() > deadline:
                proc.kill()
                raise RuntimeError(f"redis-server did not start on port {port}") from None
        time.sleep(0.05)
