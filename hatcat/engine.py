"""The Engine: the one object that owns the model and everything that scores its states.

`app.py` builds exactly one Engine; the OpenAI API routes and every Gradio panel receive
that same object, so a probe pack hot-loaded in the browser is what the API serves next.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from hatcat.concepts import ConceptPack, load_pack
from hatcat.config import Settings
from hatcat.model import LoadedModel, load_model
from hatcat.monitor import Monitor
from hatcat.probes import PROBES_ROOT, ProbeBank, ProbePack, model_slug
from hatcat.steering import SteeringRegistry, SteeringVectors

SAFETY_MELD = Path(__file__).resolve().parents[1] / "data" / "concept_packs" / "safety-v1.yaml"


class Engine:
    """Model + tokenizer, concept pack, probe bank + monitor, steering, and a generation lock."""

    def __init__(self, settings: Settings, loaded: LoadedModel, concepts: ConceptPack) -> None:
        self.settings = settings
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.concepts = concepts
        self.loaded_at = time.time()
        self.probes: ProbePack | None = None
        self.bank: ProbeBank | None = None
        self.monitor: Monitor | None = None
        self.vectors: SteeringVectors | None = None
        self.steering = SteeringRegistry()
        # The model's forward hooks and KV state are not re-entrant: one generation at a time.
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> "Engine":
        """Load the configured model, the concept pack (+ safety meld) and the probe pack if one fits."""
        loaded = load_model(
            settings.model_name,
            device=settings.device,
            dtype=settings.dtype,
            cache_dir=settings.cache_dir,
            offline=settings.hf_offline,
        )
        engine = cls(settings, loaded, load_pack(melds=[SAFETY_MELD]))
        folder = settings.probe_pack or engine.default_probe_folder()
        if settings.probe_pack or folder.is_dir():
            engine.load_probes(folder)
        return engine

    def default_probe_folder(self) -> Path:
        return PROBES_ROOT / model_slug(self.loaded.name) / self.concepts.id

    def load_probes(self, folder: str | Path) -> ProbePack:
        """Verify a probe pack against the running model and concept pack, then swap it in."""
        pack = ProbePack.load(folder, model_id=self.loaded.name, hidden_size=self.loaded.hidden_size)
        pack.check_concepts(self.concepts.id, self.concepts.checksum, set(self.concepts.ids))
        bank = ProbeBank(pack, self.loaded.device)
        monitor = Monitor(bank, self.concepts, self.settings.base_layers, self.settings.keep_top_k)
        vectors = SteeringVectors(self.model, self.tokenizer, bank)
        with self._lock:  # never swap under a running generation
            self.probes, self.bank, self.monitor, self.vectors = pack, bank, monitor, vectors
        return pack

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model for one generation or analysis."""
        with self._lock:
            yield

    def info(self) -> dict[str, object]:
        """What `/health` reports about the loaded model and packs."""
        return {
            "model": self.loaded.name,
            "model_class": type(self.model).__name__,
            "device": str(self.loaded.device),
            "dtype": str(self.loaded.dtype).removeprefix("torch."),
            "layers": len(self.loaded.layers),
            "hidden_size": self.loaded.hidden_size,
            "load_seconds": round(self.loaded.load_seconds, 3),
            "loaded_from_cache": self.loaded.from_cache,
            "concept_pack": self.concepts.id,
            "concepts": len(self.concepts),
            "probe_pack": self.probes.id if self.probes else None,
            "probes": len(self.bank) if self.bank else 0,
            "tap_layer": self.bank.tap_layer if self.bank else None,
        }
