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
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from hatcat.concepts import ConceptPack
from hatcat.model import LoadedModel
from hatcat.paths import model_slug
from hatcat.training.run import TrainSettings, train

log = logging.getLogger(__name__)

ALL_LAYERS = (0, 1, 2, 3, 4, 5)


def auto_pack_folder(cache_dir: Path, model: str, concept_pack: str) -> Path:
    return cache_dir / "packs" / "auto" / model_slug(model) / concept_pack


class AutoTrainer:
    """One background training run on a running model, with a progress record: trains under
    `guard` (the engine's model lock, per batch) and hands the finished pack folder to `load`."""

    def __init__(
        self,
        loaded: LoadedModel,
        concepts: ConceptPack,
        cache_dir: Path,
        guard: Callable[[], AbstractContextManager],
        load: Callable[[Path], object],
        limit: int | None = None,
    ) -> None:
        self.loaded, self.concepts, self.cache_dir, self.guard, self.load = loaded, concepts, cache_dir, guard, load
        # a limited run is a quick check of the path: it also reads only a slice of the control corpus
        self.settings = TrainSettings(layers=ALL_LAYERS, limit=limit, control_per_split=100 if limit else None)
        self.folder = auto_pack_folder(cache_dir, loaded.name, concepts.id)
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
            folder, report = train(
                self.loaded.with_own_tokenizer(),  # requests tokenize beside it
                self.concepts,
                self.settings,
                self.cache_dir,
                self.folder,
                progress=self._progress,
                guard=self.guard,
            )
            self.load(folder)
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
