"""The Engine: the one object that owns the model, everything that scores its states, and the
operations on them.

`app.py` builds exactly one Engine; the OpenAI API routes and every Gradio panel receive that
same object and call its operations (generate, analyze, load_probes, train_and_load,
apply_thresholds, ...), so a probe pack hot-loaded in the browser is what the API serves next.
What it serves with — concept pack, probe pack, bank, monitor, steering vectors — is one frozen
`Packs` bundle, replaced whole under the lock: a request reads one consistent snapshot.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Self

from hatcat.access import Directory
from hatcat.analysis import analyses, check_request
from hatcat.batching import Generation, Scheduler
from hatcat.concepts import ConceptPack, load_pack
from hatcat.config import Settings
from hatcat.errors import Cancelled, Conflict, InvalidValue, NotFound
from hatcat.generation import GenerationSettings
from hatcat.model import LoadedModel, load_model
from hatcat.monitor import Monitor
from hatcat.paths import SAFETY_MELD
from hatcat.pipeline import ANALYZE_BATCH
from hatcat.probes import ProbeBank, ProbePack, default_folder, discover, pack_id
from hatcat.readouts import Readouts
from hatcat.sessions import open_session_store
from hatcat.steering import Steering, SteeringVectors
from hatcat.store import Store
from hatcat.store.events import record_events

if TYPE_CHECKING:
    from hatcat.training.run import RunReport


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


@dataclass(frozen=True)
class Packs:
    """What the engine serves with; without a probe pack only `concepts` is set."""

    concepts: ConceptPack
    probes: ProbePack | None = None
    bank: ProbeBank | None = None
    monitor: Monitor | None = None
    vectors: SteeringVectors | None = None


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
        self.loaded_at = time.time()
        self.packs = Packs(concepts)
        self._concept_packs = {concepts.id: concepts}  # every concept pack a probe pack may be checked against
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

            auto = auto_pack_folder(settings.cache_dir, loaded.name, engine.concepts.id)
            if (auto / "manifest.json").is_file():
                engine.load_probes(auto)
            else:
                engine.auto_trainer = AutoTrainer(
                    loaded,
                    engine.concepts,
                    settings.cache_dir,
                    engine.exclusive,
                    engine.load_probes,
                    settings.auto_train_limit,
                ).start()
        _settle_heap()
        return engine

    def default_probe_folder(self) -> Path:
        return default_folder(self.settings.probes_dir, self.loaded.name, self.concepts.id)

    # read-only views of the current bundle (one attribute read each: take `packs` once for several)
    concepts = property(lambda self: self.packs.concepts)
    probes = property(lambda self: self.packs.probes)
    bank = property(lambda self: self.packs.bank)
    monitor = property(lambda self: self.packs.monitor)
    vectors = property(lambda self: self.packs.vectors)

    @property
    def probe_pack_id(self) -> str | None:
        return self.packs.probes.id if self.packs.probes else None

    def probe_concepts(self) -> list[str]:
        """Concept ids the loaded probe pack scores, in row order ([] without a pack)."""
        return list(self.packs.bank.concepts) if self.packs.bank else []

    def probe_metrics(self) -> dict:
        """The loaded probe pack's metrics.json ({} without a pack)."""
        return self.packs.probes.metrics if self.packs.probes else {}

    def concept_evidence(self, concept: str) -> dict:
        """The loaded probe pack's dashboard and quality card of `concept`, and the threshold the monitor fires
        it at now (the family-wise one where the pack is calibrated); {} without a probe for it."""
        from hatcat.evidence.view import evidence

        probes = self.packs.probes
        if probes is None or concept not in probes.concepts:
            return {}
        return {**evidence(probes, concept), "firing_threshold": self.threshold(concept)}

    def quality_cards(self) -> list[dict]:
        """Every concept's quality card in the loaded probe pack ([] without one)."""
        from hatcat.evidence.view import cards

        return cards(self.packs.probes) if self.packs.probes is not None else []

    def evidence_info(self) -> dict:
        """The loaded probe pack's evidence.json (corpus scanned, family-wise firing numbers), {} if none."""
        from hatcat.evidence.view import info

        return info(self.packs.probes) if self.packs.probes is not None else {}

    def require_probes(self, what: str) -> Packs:
        """The current bundle; Conflict (409) when no probe pack is loaded."""
        packs = self.packs
        if packs.monitor is None:
            raise Conflict(
                f"{what} needs a probe pack and none is loaded: set HATCAT_PROBE_PACK or install one under probes/",
                code="no_probe_pack",
            )
        return packs

    def probe_packs(self) -> dict[str, tuple[Path, dict, bool]]:
        """Probe pack id -> (folder, manifest, loaded?) for every pack under the probe root and the loaded one."""
        packs = {pack_id(m): (folder, m, False) for folder, m in discover(self.settings.probes_dir)}
        if (loaded := self.packs.probes) is not None:
            packs[loaded.id] = (loaded.folder, loaded.manifest, True)
        return packs

    def load_probes(self, folder: str | Path, concepts: ConceptPack | None = None) -> ProbePack:
        """Verify a probe pack against the running model and concept pack, then swap it in.

        `concepts`: a concept pack to swap in with it (e.g. the base pack merged with a custom
        concept from the workbench); by default the one with the pack's concept-pack id that the
        engine has served with, else the current one. The probe pack is checked against it."""
        pack = ProbePack.load(folder, model_id=self.loaded.name, hidden_size=self.loaded.hidden_size)
        wanted = pack.manifest.get("concept_pack", {}).get("id")
        concepts = concepts or self._concept_packs.get(wanted, self.packs.concepts)
        pack.check_concepts(concepts.id, concepts.checksum, set(concepts.ids))
        bank = ProbeBank(pack, self.loaded.device)
        readouts = Readouts.load(pack.folder, pack.manifest, self.loaded.device)  # behaviours, at their own blocks
        monitor = Monitor(bank, concepts, self.settings.base_layers, self.settings.keep_top_k, readouts)
        vectors = SteeringVectors(self.model, self.tokenizer, bank)
        with self._lock:  # never swap under a running step
            self.packs = Packs(concepts, pack, bank, monitor, vectors)
            self._concept_packs[concepts.id] = concepts
        _settle_heap()
        return pack

    def train_and_load(
        self, concepts: list[str], pack: ConceptPack | None = None, before_load: Callable[[Path], None] | None = None
    ) -> tuple[ProbePack, RunReport]:
        """Train probes for `concepts` (of `pack`, default the current concept pack) at the loaded
        pack's tap layer on the running model, holding it, then (after `before_load(folder)`, e.g.
        an audit record that may refuse) hot-load the result: (the loaded probe pack, the run's report)."""
        from hatcat.training.run import TrainSettings, train

        pack = pack or self.packs.concepts
        tap = self.packs.bank.tap_layer if self.packs.bank else TrainSettings().tap_layer
        out = self.settings.cache_dir / "packs" / f"workbench-{time.strftime('%Y%m%d-%H%M%S')}"
        with self.exclusive():
            folder, report = train(
                self.loaded.with_own_tokenizer(),
                pack,
                TrainSettings(concepts=tuple(concepts), tap_layer=tap),
                self.settings.cache_dir,
                out,
            )
        if before_load is not None:
            before_load(folder)
        return self.load_probes(folder, concepts=pack), report

    def apply_thresholds(self, overrides: dict[str, float], reset: bool = False) -> list[str]:
        """Serve with these activation thresholds from the next step on (`reset`: the pack's, then
        `overrides`, as a threshold profile); returns the concepts not in the pack (skipped)."""
        with self._lock:
            packs = self.require_probes("thresholds")
            known = {c: float(v) for c, v in overrides.items() if c in packs.bank.index}
            self.packs = replace(packs, monitor=packs.monitor.with_thresholds(known, reset))
        return sorted(set(overrides) - set(known))

    def threshold(self, concept: str) -> float | None:
        """The activation threshold the monitor uses for `concept` now (None without a probe for it)."""
        packs = self.packs
        if packs.monitor is None or concept not in packs.bank.index:
            return None
        return round(float(packs.monitor.thresholds[packs.bank.index[concept]]), 4)

    def threshold_overrides(self) -> dict[str, float]:
        """Concepts whose threshold differs from the pack's ({} without a pack)."""
        return self.packs.monitor.overrides() if self.packs.monitor else {}

    def check_steering(self, concept: str, layer: int | None) -> None:
        """NotFound for a concept without a probe, InvalidValue for a block the model lacks."""
        packs = self.require_probes("steering")
        if concept not in packs.bank.index:
            raise NotFound(
                f"unknown concept: {concept} (the loaded probe pack {packs.probes.id} has no probe for it)",
                param="concept",
                code="concept_not_found",
            )
        layers = len(self.loaded.layers)
        if layer is not None and layer >= layers:
            raise InvalidValue(
                f"layer {layer} is out of range: the model has {layers} decoder layers (0..{layers - 1})", param="layer"
            )

    def held_out_scores(self, concept: str, split: str = "val") -> tuple[list[float], list[int]]:
        """The loaded probe's scores for `concept` on its `split` prompts and their labels (1 positive,
        0 negative), for the workbench's threshold tuning (`hatcat.training.held_out`); the model is
        held per forward pass for prompts not in the token-state cache."""
        from hatcat.training.held_out import held_out_scores  # training code: loaded only when asked

        packs = self.require_probes("threshold tuning")
        if concept not in packs.bank.index:
            raise NotFound(f"no probe for {concept!r} in the loaded pack", param="concept", code="concept_not_found")
        return held_out_scores(
            self.loaded, packs.bank, packs.concepts, concept, split, self.settings.cache_dir, self.exclusive
        )

    def record_response(self, records: list, request_id: str, actor: str) -> int:
        """Store the divergence events of a served response (records: TokenRecords or their dicts);
        blocking database work, so async callers run it in a thread. Returns how many were stored."""
        packs = self.packs
        if self.records is None or packs.monitor is None or not records:
            return 0
        context = {
            "request_id": request_id,
            "actor": actor,
            "model": self.loaded.name,
            "probe_pack": packs.probes.id,
            "pack_checksum": packs.probes.checksum,
        }
        thresholds = dict(zip(packs.bank.concepts, packs.monitor.thresholds.tolist()))
        return record_events(self.records, records, thresholds, context)

    def generate(self, prompt: str, settings: GenerationSettings, steerings: list[Steering] = ()) -> Generation:
        """Start a generation in the running batch (continuous batching, see `hatcat.batching`):
        MonitoredToken ... MonitoredFinish (records and summary None without a probe pack).
        Raises QueueFull (429) past HATCAT_MAX_QUEUE waiting; `cancel()` the result to stop."""
        packs = self.packs
        return self.scheduler.submit(prompt, settings, steerings if packs.monitor else (), packs.monitor, packs.vectors)

    def analyze(
        self,
        texts: list[str],
        concepts: list[str] | None = None,
        top_k: int = 10,
        batch_size: int = ANALYZE_BATCH,
        names: list[str] | None = None,
    ) -> Iterator[tuple[int, dict[str, object]]]:
        """(index, analysis document) per text, scored in padded batches (see `hatcat.analysis`); the
        model is held per batch, so generations interleave. Raises HatCatError for a bad request, naming
        the text as `names[i]` where given."""
        monitor = self.require_probes("analysis").monitor
        check_request(self.model, self.tokenizer, monitor, texts, concepts, names)
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
        packs = self.packs
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
            "concept_pack": packs.concepts.id,
            "concepts": len(packs.concepts),
            "probe_pack": packs.probes.id if packs.probes else None,
            "probes": len(packs.bank) if packs.bank else 0,
            "tap_layer": packs.bank.tap_layer if packs.bank else None,
            "monitoring": packs.monitor is not None,
            **({"auto_train": self.auto_trainer.status()} if self.auto_trainer else {}),
        }


def _settle_heap() -> None:
    """Take what is alive now (model, tokenizer, concept and probe packs: ~0.5M objects) out of the
    garbage collector's generations. Token records are allocated fast enough to trigger full
    collections, and each one walked all of it: 100-400 ms pauses in analysis and streaming."""
    gc.freeze()
