"""Auto-train: a model without a probe pack gets one, trained in the background at first start.

With HATCAT_AUTO_TRAIN=1 and no pack for the running model, the server starts serving at once
(generation unmonitored) while a daemon thread trains the full pack with the shipped recipe
(hatcat/training/run.py). Forward passes take the engine's model lock one batch at a time, so
requests interleave with training. Token states go to the resumable cache, so a restart picks up
where the last run stopped; the finished pack is written under
`$HATCAT_CACHE_DIR/packs/auto/<model>/<concept pack>/`, loaded at the next start, and hot-loaded
into the running engine as soon as it is done. `status()` is what /health and the Status panel show.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hatcat.paths import model_slug
from hatcat.training.run import TrainSettings, train

if TYPE_CHECKING:
    from hatcat.engine import Engine

log = logging.getLogger(__name__)

ALL_LAYERS = (0, 1, 2, 3, 4, 5)


def auto_pack_folder(engine: Engine) -> Path:
    return engine.settings.cache_dir / "packs" / "auto" / model_slug(engine.loaded.name) / engine.concepts.id


class AutoTrainer:
    """One background training run for one engine, with a progress record."""

    def __init__(self, engine: Engine, limit: int | None = None) -> None:
        self.engine = engine
        # a limited run is a quick check of the path: it also reads only a slice of the control corpus
        self.settings = TrainSettings(layers=ALL_LAYERS, limit=limit, control_per_split=100 if limit else None)
        self.folder = auto_pack_folder(engine)
        self._state: dict[str, Any] = {"state": "queued", "phase": None, "fraction": 0.0}
        self._thread = threading.Thread(target=self._run, name="hatcat-auto-train", daemon=True)

    def start(self) -> AutoTrainer:
        self._state["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._thread.start()
        return self

    def status(self) -> dict[str, Any]:
        return dict(self._state)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _progress(self, phase: str, fraction: float) -> None:
        self._state.update(state="training", phase=phase, fraction=round(fraction, 4))

    def _run(self) -> None:
        try:
            self._state["state"] = "training"
            engine = self.engine
            folder, report = train(
                engine.loaded.with_own_tokenizer(),  # requests tokenize beside it
                engine.concepts,
                self.settings,
                engine.settings.cache_dir,
                self.folder,
                progress=self._progress,
                guard=engine.exclusive,
            )
            engine.load_probes(folder)
            self._state.update(
                state="done",
                phase=None,
                fraction=1.0,
                pack=str(folder),
                concepts=report.concepts,
                seconds=round(report.wall_seconds, 1),
            )
        except Exception as err:  # reported on /health (traceback in the log); the server keeps serving unmonitored
            log.exception("auto-train failed")
            self._state.update(state="failed", error=f"{type(err).__name__}: {err}")
