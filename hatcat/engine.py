"""The Engine: the one object that owns the model and everything that scores its states.

`app.py` builds exactly one Engine; the OpenAI API routes and every Gradio panel receive
that same object, so a probe pack hot-loaded in the browser is what the API serves next.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from hatcat.access import Directory
from hatcat.analyze import analyses, check_request
from hatcat.batching import Generation, Scheduler
from hatcat.concepts import ConceptPack, load_pack
from hatcat.config import Settings
from hatcat.errors import Cancelled, Conflict
from hatcat.generation import GenerationSettings
from hatcat.model import LoadedModel, load_model
from hatcat.monitor import Monitor
from hatcat.paths import SAFETY_MELD
from hatcat.pipeline import ANALYZE_BATCH
from hatcat.probes import ProbeBank, ProbePack, default_folder, discover, pack_id
from hatcat.sessions import open_session_store
from hatcat.steering import Steering, SteeringVectors
from hatcat.store import Store


class FairLock:
    """A lock granted first come, first served; counts who holds it or waits for it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: deque[object] = deque()
        self._held = False

    def acquire(self, cancel: threading.Event | None = None) -> bool:
        """Block until it is this caller's turn; False (and no place kept) once `cancel` is set."""
        ticket = object()
        with self._cond:
            self._waiting.append(ticket)
            while self._held or self._waiting[0] is not ticket:
                if cancel is not None and cancel.is_set():
                    self._waiting.remove(ticket)
                    self._cond.notify_all()
                    return False
                self._cond.wait(0.05 if cancel is not None else None)
            self._waiting.popleft()
            self._held = True
            return True

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._waiting) + int(self._held)


class Engine:
    """Model + tokenizer, concept pack, probe bank + monitor, steering, the batch scheduler and a fair lock."""

    def __init__(
        self,
        settings: Settings,
        loaded: LoadedModel,
        concepts: ConceptPack,
        users: Directory | None = None,
        records: Store | None = None,
    ) -> None:
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
        self.steering = open_session_store(settings.session_store)  # steerings per session (Redis: shared)
        self.auto_trainer = None  # hatcat.auto_train.AutoTrainer while a pack trains in the background
        # who may do what (None: no access control); the record store (None: nothing is recorded)
        if users is None and settings.access_control:
            users = Directory.load(settings.users_file, settings.api_key)
        self.users, self.records = users, records
        # The model's forward hooks are not re-entrant: one forward (a batch step, an analysis batch,
        # a pack load) at a time, granted in arrival order.
        self._lock = FairLock()
        self.scheduler = Scheduler(
            self.model, self.tokenizer, self.exclusive, max_batch=settings.max_batch, max_queue=settings.max_queue
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Engine:
        """Open the users file and the record store, then load the configured model, the concept
        pack (+ safety meld) and the probe pack if one fits."""
        users = Directory.load(settings.users_file, settings.api_key) if settings.access_control else None
        records = Store(settings.db_url)
        loaded = load_model(
            settings.model_name,
            device=settings.device,
            dtype=settings.dtype,
            cache_dir=settings.cache_dir,
            offline=settings.hf_offline,
        )
        engine = cls(settings, loaded, load_pack(melds=[SAFETY_MELD]), users, records)
        folder = settings.probe_pack or engine.default_probe_folder()
        if settings.probe_pack or folder.is_dir():
            engine.load_probes(folder)
        elif settings.auto_train:
            from hatcat.auto_train import AutoTrainer, auto_pack_folder

            if (auto_pack_folder(engine) / "manifest.json").is_file():
                engine.load_probes(auto_pack_folder(engine))
            else:
                engine.auto_trainer = AutoTrainer(engine, settings.auto_train_limit).start()
        return engine

    def default_probe_folder(self) -> Path:
        return default_folder(self.settings.probes_dir, self.loaded.name, self.concepts.id)

    def probe_packs(self) -> dict[str, tuple[Path, dict, bool]]:
        """Probe pack id -> (folder, manifest, loaded?) for every pack under the probe root and the loaded one."""
        packs = {pack_id(m): (folder, m, False) for folder, m in discover(self.settings.probes_dir)}
        if self.probes is not None:
            packs[self.probes.id] = (self.probes.folder, self.probes.manifest, True)
        return packs

    def load_probes(self, folder: str | Path, concepts: ConceptPack | None = None) -> ProbePack:
        """Verify a probe pack against the running model and concept pack, then swap it in.

        `concepts`: a concept pack to swap in with it (e.g. the base pack merged with a custom
        concept from the workbench); the probe pack is checked against that one instead."""
        concepts = concepts or self.concepts
        pack = ProbePack.load(folder, model_id=self.loaded.name, hidden_size=self.loaded.hidden_size)
        pack.check_concepts(concepts.id, concepts.checksum, set(concepts.ids))
        bank = ProbeBank(pack, self.loaded.device)
        monitor = Monitor(bank, concepts, self.settings.base_layers, self.settings.keep_top_k)
        vectors = SteeringVectors(self.model, self.tokenizer, bank)
        with self._lock:  # never swap under a running generation
            self.probes, self.bank, self.monitor, self.vectors, self.concepts = pack, bank, monitor, vectors, concepts
        return pack

    def reset_thresholds(self, overrides: dict[str, float]) -> list[str]:
        """The pack's thresholds, then `overrides` (a threshold profile); returns the concepts not in the pack."""
        known = {c: float(v) for c, v in overrides.items() if c in self.bank.index}
        self.monitor.set_thresholds(dict(zip(self.bank.concepts, self.bank.act_threshold.tolist())))
        self.monitor.set_thresholds(known)
        return sorted(set(overrides) - set(known))

    def held_out_scores(self, concept: str, split: str = "val") -> tuple[list[float], list[int]]:
        """The loaded activation probe's scores for `concept` on its `split` prompts (labels: 1
        positive, 0 negative), rebuilt with the run's prompt generator and negatives; one forward
        per prompt missing from the activation cache. For the workbench's threshold tuning."""
        from hatcat.training.activations import ActivationCache, extract
        from hatcat.training.run import TrainSettings, plan

        if self.bank is None or concept not in self.bank.index:
            raise KeyError(f"no probe for {concept!r} in the loaded pack")
        run = self.probes.manifest.get("training", {})
        work = plan(
            self.concepts,
            TrainSettings(
                concepts=(concept,), n_hard=run.get("n_hard", 8), n_easy=run.get("n_easy", 8), seed=run.get("seed", 0)
            ),
        )
        texts, rows = work.split(split)
        cache = ActivationCache(self.settings.cache_dir, self.loaded.name, self.bank.tap_layer)
        with self._lock:
            extract(self.model, self.tokenizer, texts, [cache])
        index, labels = rows.labelled(0)
        scores = self.bank.score(cache.stack([texts[i] for i in index], self.bank.pooling).to(self.loaded.device))
        return scores[:, self.bank.index[concept]].tolist(), labels.astype(int).tolist()

    def generate(self, prompt: str, settings: GenerationSettings, steerings: list[Steering] = ()) -> Generation:
        """Start a generation in the running batch (continuous batching, see `hatcat.batching`):
        MonitoredToken ... MonitoredFinish (records and summary None without a probe pack).
        Raises QueueFull (429) past HATCAT_MAX_QUEUE waiting; `cancel()` the result to stop."""
        monitor, vectors = self.monitor, self.vectors
        return self.scheduler.submit(prompt, settings, steerings if monitor else (), monitor, vectors)

    def analyze(
        self, texts: list[str], concepts: list[str] | None = None, top_k: int = 10, batch_size: int = ANALYZE_BATCH
    ) -> Iterator[tuple[int, dict[str, object]]]:
        """(index, analysis document) per text, scored in padded batches (see `hatcat.analyze`); the
        model is held per batch, so generations interleave. Raises HatCatError for a bad request."""
        monitor = self.monitor
        if monitor is None:
            raise Conflict("analysis needs a probe pack and none is loaded", code="no_probe_pack")
        check_request(self.model, self.tokenizer, monitor, texts, concepts)
        return analyses(self.model, self.tokenizer, monitor, texts, concepts, top_k, batch_size, hold=self.exclusive)

    @contextmanager
    def exclusive(self, cancel: threading.Event | None = None) -> Iterator[None]:
        """Hold the model for one generation or analysis, after everyone who asked earlier.

        Raises `Cancelled` when `cancel` is set while still waiting (the turn passes on)."""
        if not self._lock.acquire(cancel):
            raise Cancelled("the request was cancelled while waiting for its turn")
        try:
            yield
        finally:
            self._lock.release()

    @property
    def queue_depth(self) -> int:
        """Generations running or waiting in the batch, and other work waiting for the model."""
        return self.scheduler.depth + self._lock.depth

    def info(self) -> dict[str, object]:
        """What `/health` reports about the loaded model and packs."""
        return {
            "model": self.loaded.name,
            "model_class": type(self.model).__name__,
            "device": str(self.loaded.device),
            "dtype": str(self.loaded.dtype).removeprefix("torch."),
            "dtype_choice": self.loaded.dtype_choice,
            "layers": len(self.loaded.layers),
            "hidden_size": self.loaded.hidden_size,
            "load_seconds": round(self.loaded.load_seconds, 3),
            "loaded_from_cache": self.loaded.from_cache,
            "concept_pack": self.concepts.id,
            "concepts": len(self.concepts),
            "probe_pack": self.probes.id if self.probes else None,
            "probes": len(self.bank) if self.bank else 0,
            "tap_layer": self.bank.tap_layer if self.bank else None,
            **({"auto_train": self.auto_trainer.status()} if self.auto_trainer else {}),
        }
