"""One training run: concepts -> prompts -> cached activations -> probes -> a probe pack on disk."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hatcat.concepts import ConceptPack
from hatcat.errors import InvalidValue
from hatcat.model import LoadedModel
from hatcat.probes import per_layer, save_pack
from hatcat.training.activations import ActivationCache, extract, inner_token_features, text_features
from hatcat.training.fit import LinearProbes, Rows, fit_probes, metrics
from hatcat.training.prompts import SPLITS, Prompt, build_prompts, negatives

BACKGROUND_PROMPTS = 1200  # per split, at most a quarter of its prompts


@dataclass(frozen=True)
class TrainSettings:
    """What a run trains and how; recorded in the pack's manifest."""

    layers: tuple[int, ...] = (0, 1, 2, 3, 4)
    concepts: tuple[str, ...] = ()  # empty: every concept of the chosen layers
    limit: int | None = None  # at most this many concepts (first in pack order), for quick runs
    tap_layer: int = 15  # results/tap_sweep.json
    pooling: str = "last"
    shrinkage: float = 0.2
    n_hard: int = 8
    n_easy: int = 8
    seed: int = 0
    batch_size: int = 64


@dataclass
class RunReport:
    """What a run did, for results/training.json."""

    concepts: int
    prompts: int
    computed_prompts: int
    wall_seconds: float
    extraction_seconds: float
    phases: dict[str, float] = field(default_factory=dict)


def select_concepts(pack: ConceptPack, settings: TrainSettings) -> list[str]:
    """The concepts to train, in pack order; unknown ids are refused by name."""
    if settings.concepts:
        unknown = [c for c in settings.concepts if c not in pack]
        if unknown:
            raise InvalidValue(f"unknown concept(s): {', '.join(unknown)}", param="concepts")
        chosen = [c for c in pack.ids if c in set(settings.concepts)]
    else:
        chosen = [c.id for c in pack if c.layer in settings.layers]
    return chosen[: settings.limit] if settings.limit else chosen


def _rows(
    prompts: list[Prompt], trained: list[str], neg: dict[str, tuple[list[str], list[str]]], split: str
) -> tuple[list[str], Rows]:
    """Unique texts of one split and, per trained concept, which of them are positives / negatives."""
    texts: dict[str, int] = {}
    pos_of: dict[str, list[int]] = defaultdict(list)
    own_neg: dict[str, list[int]] = defaultdict(list)
    for p in prompts:
        if p.split == split:
            row = texts.setdefault(p.text, len(texts))
            (pos_of if p.positive else own_neg)[p.concept].append(row)
    as_array = lambda ids: np.unique(np.array([r for c in ids for r in pos_of[c]], dtype=np.int64))
    rows = Rows(
        pos=[as_array([c]) for c in trained],
        hard=[np.union1d(as_array(neg[c][0]), np.array(own_neg[c], dtype=np.int64)) for c in trained],
        easy=[as_array(neg[c][1]) for c in trained],
    )
    return list(texts), rows


@dataclass
class Plan:
    """The concepts a run trains, their negatives, and every prompt needed (negatives' included)."""

    trained: list[str]
    negatives: dict[str, tuple[list[str], list[str]]]
    prompts: list[Prompt]

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]

    def split(self, split: str) -> tuple[list[str], Rows]:
        return _rows(self.prompts, self.trained, self.negatives, split)


def plan(pack: ConceptPack, settings: TrainSettings) -> Plan:
    """Select concepts, draw their negatives from the whole pack, and build all prompts."""
    trained = select_concepts(pack, settings)
    neg = {c: negatives(pack, c, pack.ids, settings.n_hard, settings.n_easy, settings.seed) for c in trained}
    order = {c: i for i, c in enumerate(pack.ids)}
    needed = sorted(set(trained) | {n for hard, easy in neg.values() for n in (*hard, *easy)}, key=order.__getitem__)
    return Plan(trained, neg, build_prompts(pack, needed, settings.seed))


def train(
    loaded: LoadedModel, pack: ConceptPack, settings: TrainSettings, cache_dir: Path, out: Path
) -> tuple[Path, RunReport]:
    """Train activation and text-side probes for the selected concepts and write a probe pack to `out`."""
    start = time.perf_counter()
    phases: dict[str, float] = {}
    work = plan(pack, settings)
    trained, prompts = work.trained, work.prompts
    phases["prompts"] = time.perf_counter() - start

    cache = ActivationCache(cache_dir, loaded.name, settings.tap_layer)
    todo = len(cache.missing(work.texts))
    t0 = time.perf_counter()
    extract(loaded.model, loaded.tokenizer, work.texts, [cache], batch_size=settings.batch_size)
    phases["extraction"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    split_texts, split_rows = {}, {}
    for split in SPLITS:
        split_texts[split], split_rows[split] = work.split(split)
    features = {
        "activation": {s: cache.stack(split_texts[s], settings.pooling) for s in SPLITS},
        "text": {s: text_features(loaded.model, loaded.tokenizer, split_texts[s]) for s in SPLITS},
    }
    for split in SPLITS:  # background rows: inner-token states of a sample of this split's prompts
        rng = np.random.default_rng(settings.seed)
        texts = split_texts[split]
        sample = [texts[i] for i in rng.choice(len(texts), min(BACKGROUND_PROMPTS, len(texts) // 4), replace=False)]
        hidden, words = inner_token_features(
            loaded.model, loaded.tokenizer, sample, settings.tap_layer, settings.batch_size
        )
        first = len(features["activation"][split])
        features["activation"][split] = torch.cat([features["activation"][split], hidden])
        features["text"][split] = torch.cat([features["text"][split], words])
        split_rows[split].background = np.arange(first, first + len(hidden))
    probes: dict[str, LinearProbes] = {}
    side_metrics: dict[str, Any] = {}
    for side, x in features.items():
        probes[side] = fit_probes(x["train"], split_rows["train"], x["val"], split_rows["val"], settings.shrinkage)
        side_metrics[side] = _summarise(
            pack, trained, metrics(probes[side].probs(x["test"]), probes[side].threshold, split_rows["test"])
        )
    phases["fit"] = time.perf_counter() - t0

    manifest = {
        "model": loaded.name,
        "model_class": type(loaded.model).__name__,
        "hidden_size": loaded.hidden_size,
        "tap_layer": settings.tap_layer,
        "pooling": settings.pooling,
        "text_features": "mean input embedding of the text's tokens",
        "background": f"inner-token states of up to {BACKGROUND_PROMPTS} prompts per split, negative for every concept",
        "concept_pack": {"id": pack.id, "checksum": pack.checksum},
        "concepts": trained,
        "training": {
            **asdict(settings),
            "prompts": len(prompts),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    }
    metrics_doc = {**side_metrics["activation"], "text": side_metrics["text"]}
    save_pack(out, manifest, {side: (p.weight, p.bias, p.threshold) for side, p in probes.items()}, metrics_doc)
    report = RunReport(len(trained), len(prompts), todo, time.perf_counter() - start, phases["extraction"], phases)
    return out, report


def _summarise(pack: ConceptPack, trained: list[str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`per_concept` and `per_layer` (mean F1/AUROC over concepts with both classes in the test split)."""
    per_concept = {c: {"layer": pack[c].layer, **m} for c, m in zip(trained, rows)}
    return {"per_concept": per_concept, "per_layer": per_layer(per_concept)}
