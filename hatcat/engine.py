"""The Engine: the one object that owns the model and everything that scores its states.

`app.py` builds exactly one Engine; the OpenAI API routes and every Gradio panel receive
that same object, so a probe pack hot-loaded in the browser is what the API serves next.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

from hatcat.config import Settings
from hatcat.model import LoadedModel, load_model


class Engine:
    """Model + tokenizer (later: concept pack, probe bank, steering) and a generation lock."""

    def __init__(self, settings: Settings, loaded: LoadedModel) -> None:
        self.settings = settings
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.loaded_at = time.time()
        # The model's forward hooks and KV state are not re-entrant: one generation at a time.
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> "Engine":
        """Load the configured model and build the engine around it."""
        loaded = load_model(
            settings.model_name,
            device=settings.device,
            dtype=settings.dtype,
            cache_dir=settings.cache_dir,
            offline=settings.hf_offline,
        )
        return cls(settings, loaded)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model for one generation or analysis."""
        with self._lock:
            yield

    def info(self) -> dict[str, object]:
        """What `/health` reports about the loaded model."""
        return {
            "model": self.loaded.name,
            "model_class": type(self.model).__name__,
            "device": str(self.loaded.device),
            "dtype": str(self.loaded.dtype).removeprefix("torch."),
            "layers": len(self.loaded.layers),
            "hidden_size": self.loaded.hidden_size,
            "load_seconds": round(self.loaded.load_seconds, 3),
            "loaded_from_cache": self.loaded.from_cache,
        }
