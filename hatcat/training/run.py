"""One training run: concepts -> texts -> cached token states -> probes -> a probe pack on disk.

The recipe (chosen on dev data written by others; see the README):
1. per concept a few training texts (hatcat/training/recipe.training_texts), pooled per text;
2. one-matrix LDA directions (or difference of means, logistic: `method`) against hard, easy and
   background negatives, where the background is every token of the control corpus's dev part
   (hatcat/training/signal.py);
3. scores standardised on those control tokens, so concepts compare with each other;
4. thresholds at a target false-positive rate on control tokens (default 1%), set at the stricter
   control quantile that keeps the target on dev sources left out of the setting
   (`held_out_level`), and checked on the control corpus's held-out test part (other sources,
   other authors);
5. a words-only detector of the same kind, standardised the same way; divergence is the capped
   residual of the activation score against it.
Per-concept metrics (metrics.json): control FPR on dev and held-out tokens, recall on natural
positives where the repository has some (data/eval, data/signal), and template metrics on the
concept's held-out template prompts as a secondary view.

`train` = `gather` (the texts) -> `extract_states` (the token-state cache) -> `activation_side`
-> `words_side` -> `write_pack`.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from hatcat.concepts import ConceptPack
from hatcat.errors import InvalidValue
from hatcat.model import LoadedModel
from hatcat.probes import save_pack
from hatcat.training.fit import Rows
from hatcat.training.prompts import Prompt, build_prompts, negatives
from hatcat.training.recipe import DATA, control_sources, control_texts, training_texts
from hatcat.training.signal import (
    Z_MID,
    capped_residual,
    control_thresholds,
    directions,
    divergence_scale,
    held_out_level,
    standardise_on_control,
)
from hatcat.training.states import TokenStateCache, extract_states, words_windows

TEMPLATE_EVAL_MAX = 60  # concepts whose held-out template prompts are scored (a fixed sample beyond)
FPR_LEVELS = (0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)  # control-score quantiles kept per concept


@dataclass(frozen=True)
class TrainSettings:
    """What a run trains and how; recorded in the pack's manifest."""

    layers: tuple[int, ...] = (0, 1, 2, 3, 4)
    concepts: tuple[str, ...] = ()  # empty: every concept of the chosen layers
    limit: int | None = None  # at most this many concepts (first in pack order), for quick runs
    tap_layer: int = 15  # results/tap_sweep.json
    method: str = "lda"  # LDA over the training templates won on dev (README)
    pooling: str = "last"
    k_texts: int = 12  # every training-split text of a concept (templates, definition, examples)
    target_fpr: float = 0.01
    control_per_split: int | None = None  # None: the whole control corpus (quick runs use fewer)
    directions_from: str | None = None  # a probe pack whose activation rows are kept as directions (recalibration)
    n_hard: int = 8
    n_easy: int = 8
    seed: int = 0
    batch_size: int = 32


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
    """The concepts a run trains, their negatives, and every template prompt of them (held-out views)."""

    trained: list[str]
    negatives: dict[str, tuple[list[str], list[str]]]
    prompts: list[Prompt]

    @property
    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]

    def split(self, split: str) -> tuple[list[str], Rows]:
        return _rows(self.prompts, self.trained, self.negatives, split)


def plan(pack: ConceptPack, settings: TrainSettings) -> Plan:
    """Select concepts, draw their negatives from the whole pack, and build all template prompts."""
    trained = select_concepts(pack, settings)
    neg = {c: negatives(pack, c, pack.ids, settings.n_hard, settings.n_easy, settings.seed) for c in trained}
    order = {c: i for i, c in enumerate(pack.ids)}
    needed = sorted(set(trained) | {n for hard, easy in neg.values() for n in (*hard, *easy)}, key=order.__getitem__)
    return Plan(trained, neg, build_prompts(pack, needed, settings.seed))


def pool(states: torch.Tensor, pooling: str) -> torch.Tensor:
    """One text's token states [T, d] as training rows: its last token, its mean, or every token."""
    if pooling == "last":
        return states[-1:]
    if pooling == "mean":
        return states.mean(0, keepdim=True)
    return states


def natural_positives() -> dict[str, list[str]]:
    """Natural texts per concept that the repository ships (dev scenes, divergence pairs, WordNet
    examples): recall at the threshold is reported on them; nothing is fitted on them."""
    out: dict[str, list[str]] = defaultdict(list)
    scenes = yaml.safe_load((DATA / "eval" / "natural_scenes.yaml").read_text())
    for c in scenes["concepts"]:
        out[c["id"]] += c["scenes"]
    for p in yaml.safe_load((DATA / "eval" / "divergence_pairs.yaml").read_text())["pairs"]:
        out[p["concept"]] += [p["implied"], p["named"]]
    wordnet = yaml.safe_load((DATA / "signal" / "wordnet_examples.yaml").read_text())
    for group in wordnet.values():
        for c, texts in group.items():
            out[c] += texts
    return out


@dataclass
class Texts:
    """Every text a run reads: training texts per concept, the control corpus, natural positives, held-out templates."""

    trained: list[str]
    needed: list[str]  # the trained concepts and their negatives (none when directions come from a pack)
    of: dict[str, list[str]]  # training texts per needed concept
    order: list[str]  # the training texts, each once
    control: dict[str, list[str]]  # "dev" and "test" parts of the control corpus
    natural: dict[str, list[str]]
    held_out: tuple[list[str], list[str]]

    @property
    def all(self) -> list[str]:
        return [
            *self.control["dev"],
            *self.control["test"],
            *self.order,
            *(t for ts in self.natural.values() for t in ts),
            *self.held_out[0],
        ]


def gather(pack: ConceptPack, settings: TrainSettings, work: Plan) -> Texts:
    """The texts of a run (`plan` chose its concepts and negatives)."""
    trained = work.trained
    needed = list(dict.fromkeys([*trained, *(n for c in trained for pair in work.negatives[c] for n in pair)]))
    if settings.directions_from:
        needed = []  # directions come from the given pack: no training texts to encode
    of = {c: training_texts(pack[c], settings.k_texts) for c in needed}
    limit = settings.control_per_split
    return Texts(
        trained,
        needed,
        of,
        list(dict.fromkeys(t for c in needed for t in of[c])),
        {split: control_texts(split)[:limit] for split in ("dev", "test")},
        {c: t for c, t in natural_positives().items() if c in set(trained)},
        template_sample(work, settings.seed),
    )


@dataclass
class Side:
    """One side's probes in z units on the control corpus: weight, bias and the control dev tokens' z."""

    weight: torch.Tensor
    bias: torch.Tensor
    z_dev: torch.Tensor


def _fit_side(
    rows_x: list[torch.Tensor], control_dev: torch.Tensor, texts: Texts, work: Plan, settings: TrainSettings, side: str
) -> Side:
    """Directions (fitted on the pooled training rows against the control tokens, or taken from
    `directions_from`), standardised on the control corpus's dev tokens."""
    if settings.directions_from:
        weight, bias = pack_directions(settings.directions_from, texts.trained, side=side)
    else:
        start_of = np.concatenate([[0], np.cumsum([len(r) for r in rows_x])])
        span = {t: np.arange(start_of[i], start_of[i + 1]) for i, t in enumerate(texts.order)}
        rows_of = lambda cs: np.unique(
            np.concatenate([span[t] for c in cs for t in texts.of[c]] or [np.zeros(0)])
        ).astype(np.int64)
        n = int(start_of[-1])
        rows = Rows(
            pos=[rows_of([c]) for c in texts.trained],
            hard=[rows_of(work.negatives[c][0]) for c in texts.trained],
            easy=[rows_of(work.negatives[c][1]) for c in texts.trained],
            background=np.arange(n, n + len(control_dev)),
        )
        weight, bias = directions(torch.cat([*rows_x, control_dev]), rows, settings.method)
    weight, bias = standardise_on_control(weight, bias, control_dev)  # z units on ordinary text
    return Side(weight, bias, control_dev @ weight.T + bias)


def activation_side(cache: TokenStateCache, texts: Texts, work: Plan, settings: TrainSettings) -> Side:
    """The activation probes: pooled tap-layer states of the training texts, the control corpus's dev tokens."""
    control_dev = torch.cat([cache.get(t) for t in texts.control["dev"]])
    return _fit_side(
        [pool(cache.get(t), settings.pooling) for t in texts.order], control_dev, texts, work, settings, "activation"
    )


def words_side(loaded: LoadedModel, texts: Texts, work: Plan, settings: TrainSettings) -> Side:
    """The words-only detector: the monitor's words features of the same texts, pooled the same way."""
    words = lambda t: words_windows(loaded.model, loaded.tokenizer, t)
    words_dev = torch.cat([words(t) for t in texts.control["dev"]])
    rows_x = [] if settings.directions_from else [pool(words(t), settings.pooling) for t in texts.order]
    return _fit_side(rows_x, words_dev, texts, work, settings, "text")


def write_pack(
    out: Path,
    model: dict[str, Any],
    pack: ConceptPack,
    settings: TrainSettings,
    texts: Texts,
    act: Side,
    words: Side,
    z_threshold: torch.Tensor,
    level: float,
    metrics_doc: dict[str, Any],
) -> Path:
    """The probe pack on disk: both sides on the bank's scale (logit = z - Z_MID), the divergence
    scale, and a manifest recording how it was made (`model`: name, class and hidden size)."""
    residual_sd = capped_residual(act.z_dev, words.z_dev, z_threshold).std(0).clamp(min=1e-6)
    scale, mid_sd = divergence_scale(residual_sd, act.z_dev, words.z_dev, z_threshold)
    threshold = torch.sigmoid(z_threshold - Z_MID)  # activation 0.5 = Z_MID control standard deviations up
    manifest = {
        **model,
        "tap_layer": settings.tap_layer,
        "pooling": settings.pooling,
        "scores": f"activation = sigmoid(z - {Z_MID}), z = standard deviations above the control corpus's dev tokens",
        "text_features": "mean input embedding of the last 8 tokens; the words-only detector is standardised like z",
        "divergence": "tanh((min(z, z_threshold) - z_words) / divergence_scale): activation evidence the words do not account for",
        "divergence_scale": [round(float(s), 5) for s in scale],
        "divergence_midpoint_sd": round(mid_sd, 3),
        "threshold_level": round(level, 6),
        "background": "every token of the control corpus's dev part (data/signal/control.yaml), negative for every concept",
        "concept_pack": {"id": pack.id, "checksum": pack.checksum},
        "concepts": texts.trained,
        "training": training_record(settings, len(texts.order), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
    }
    sides = {
        "activation": (act.weight, act.bias - Z_MID, threshold),
        "text": (words.weight, words.bias - Z_MID, threshold),  # the words-only logit, on the activation's scale
    }
    return save_pack(out, manifest, sides, metrics_doc)


def train(
    loaded: LoadedModel,
    pack: ConceptPack,
    settings: TrainSettings,
    cache_dir: Path,
    out: Path,
    progress: Callable[[str, float], None] | None = None,
    guard: Callable[[], AbstractContextManager] = nullcontext,
) -> tuple[Path, RunReport]:
    """Train activation probes and the words-only detector for the selected concepts; write a probe pack.

    `progress(phase, fraction)` is called as the run goes (the server's auto-train shows it);
    `guard()` is held around each forward pass (see `extract_states`)."""
    say = progress or (lambda phase, fraction: None)
    start = time.perf_counter()
    phases: dict[str, float] = {}
    work = plan(pack, settings)
    texts = gather(pack, settings, work)
    cache = TokenStateCache(cache_dir, loaded.name, settings.tap_layer)
    todo = len(cache.missing(texts.all))
    t0 = time.perf_counter()
    extract_states(
        loaded.model,
        loaded.tokenizer,
        texts.all,
        cache,
        settings.batch_size,
        progress=lambda done, total: say("token states", done / max(total, 1)),
        guard=guard,
    )
    phases["extraction"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("fitting", 0.0)
    act = activation_side(cache, texts, work, settings)
    tokens = [len(cache.get(t)) for t in texts.control["dev"]]
    level = held_out_level(act.z_dev, np.repeat(control_sources("dev")[: len(tokens)], tokens), settings.target_fpr)
    z_threshold = control_thresholds(act.z_dev, level)
    say("fitting", 0.5)
    words = words_side(loaded, texts, work, settings)
    phases["fit"] = time.perf_counter() - t0

    say("metrics", 0.0)
    z_test = torch.cat([cache.get(t) for t in texts.control["test"]]) @ act.weight.T + act.bias
    metrics_doc = _metrics(pack, texts, act, z_threshold, z_test, cache)
    model = {"model": loaded.name, "model_class": type(loaded.model).__name__, "hidden_size": loaded.hidden_size}
    folder = write_pack(out, model, pack, settings, texts, act, words, z_threshold, level, metrics_doc)
    say("done", 1.0)
    report = RunReport(
        len(texts.trained), len(texts.order), todo, time.perf_counter() - start, phases["extraction"], phases
    )
    return folder, report


RECALIBRATION = (
    "directions kept from the source pack; scores standardised on the control corpus's dev tokens "
    "(data/signal/control.yaml); thresholds at the control quantile level that holds target_fpr on "
    "dev sources left out of the setting (held_out_level); the words-only side standardised the same way; divergence scale refitted"
)


def training_record(settings: TrainSettings, texts: int, created: str) -> dict[str, Any]:
    """The manifest's `training` block. A recalibration (`directions_from`) records where its
    directions came from (the source pack's own block, followed back through earlier
    recalibrations) and what was redone, not the fit settings it did not use."""
    record = {**asdict(settings), "texts": texts, "prompts": texts, "created": created}
    if not settings.directions_from:
        return record
    source = json.loads((Path(settings.directions_from) / "manifest.json").read_text()).get("training", {})
    for unused in ("method", "pooling", "k_texts", "directions_from", "texts", "prompts"):
        del record[unused]
    directions = source.get("directions", source)
    # packs trained before `method` was recorded were fitted with the one-matrix LDA
    record["directions"] = {"method": "lda", "from": "training templates", **directions}
    record["recalibration"] = RECALIBRATION
    return record


def pack_directions(folder: str, concepts: list[str], side: str = "activation") -> tuple[torch.Tensor, torch.Tensor]:
    """The rows (weight, bias) of `concepts` on one side of an existing probe pack, of any format."""
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    tensors = load_file(Path(folder) / f"{side}.safetensors")
    index = {c: i for i, c in enumerate(manifest["concepts"])}
    missing = [c for c in concepts if c not in index]
    if missing:
        raise ValueError(f"{folder} has no probe for: {', '.join(missing[:5])}")
    rows = torch.tensor([index[c] for c in concepts])
    return tensors["weight"][rows].float(), tensors["bias"][rows].float()


def template_sample(work: Plan, seed: int) -> tuple[list[str], list[str]]:
    """Held-out (test-split) template prompts of at most TEMPLATE_EVAL_MAX trained concepts: (texts, concept per text)."""
    concepts = work.trained
    if len(concepts) > TEMPLATE_EVAL_MAX:
        rng = np.random.default_rng(seed)
        concepts = sorted(rng.choice(concepts, TEMPLATE_EVAL_MAX, replace=False).tolist(), key=work.trained.index)
    chosen = set(concepts)
    pairs = [(p.text, p.concept) for p in work.prompts if p.split == "test" and p.positive and p.concept in chosen]
    pairs = list(dict(pairs).items())  # a text once, with its first concept
    return [t for t, _ in pairs], [c for _, c in pairs]


def _metrics(
    pack: ConceptPack, texts: Texts, act: Side, z_threshold: torch.Tensor, z_test: torch.Tensor, cache: TokenStateCache
) -> dict[str, Any]:
    """Per concept: threshold, control FPR (dev: where it was set; test: held-out sources), the
    control-score quantiles at FPR_LEVELS, natural recall where natural texts exist, and held-out
    template AUROC/F1 (own test prompts against the other sampled concepts' test prompts)."""
    trained, weight, bias, z_dev, natural = texts.trained, act.weight, act.bias, act.z_dev, texts.natural
    index = {c: i for i, c in enumerate(trained)}
    fpr_dev = (z_dev >= z_threshold).float().mean(0)
    fpr_test = (z_test >= z_threshold).float().mean(0)
    quantiles = torch.stack([control_thresholds(z_dev, level) for level in FPR_LEVELS], dim=1)
    recall = {}
    for c, positives in natural.items():
        last = torch.stack([(cache.get(t)[-1] @ weight[index[c]] + bias[index[c]]) for t in positives])
        recall[c] = (round(float((last >= z_threshold[index[c]]).float().mean()), 4), len(positives))
    template = _template_metrics(trained, index, weight, bias, z_threshold, texts.held_out, cache)
    per_concept = {}
    for c, i in index.items():
        m: dict[str, Any] = {
            "layer": pack[c].layer,
            "threshold": round(float(torch.sigmoid(z_threshold[i] - Z_MID)), 5),
            "z_threshold": round(float(z_threshold[i]), 4),
            "control_fpr_dev": round(float(fpr_dev[i]), 5),
            "control_fpr_test": round(float(fpr_test[i]), 5),
            "control_quantiles": {
                str(level): round(float(torch.sigmoid(q - Z_MID)), 5) for level, q in zip(FPR_LEVELS, quantiles[i])
            },
        }
        if c in recall:
            m["natural_recall"], m["n_natural"] = recall[c]
        if c in template:
            m.update(template[c])
        per_concept[c] = m
    by_layer: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for m in per_concept.values():
        by_layer[m["layer"]].append(m)
    per_layer = {
        str(layer): {
            "n": len(ms),
            "mean_control_fpr_test": round(float(np.mean([m["control_fpr_test"] for m in ms])), 5),
            **(
                {
                    "mean_f1": round(float(np.mean([m["f1"] for m in ms if "f1" in m])), 4),
                    "mean_auroc": round(float(np.mean([m["auroc"] for m in ms if "auroc" in m])), 4),
                    "n_template": sum("f1" in m for m in ms),
                }
                if any("f1" in m for m in ms)
                else {}
            ),
        }
        for layer, ms in sorted(by_layer.items())
    }
    return {
        "per_concept": per_concept,
        "per_layer": per_layer,
        "control": {
            "tokens_dev": len(z_dev),
            "tokens_test": len(z_test),
            "mean_fpr_dev": round(float(fpr_dev.mean()), 5),
            "mean_fpr_test": round(float(fpr_test.mean()), 5),
        },
    }


def _template_metrics(trained, index, weight, bias, z_threshold, held_out, cache) -> dict[str, dict[str, Any]]:
    texts, owner = held_out
    if not texts:
        return {}
    sampled = list(dict.fromkeys(owner))
    cols = torch.tensor([index[c] for c in sampled])
    z = torch.stack([cache.get(t)[-1] for t in texts]) @ weight[cols].T + bias[cols]  # [texts, sampled]
    owner_arr = np.array([sampled.index(c) for c in owner])
    out = {}
    for j, c in enumerate(sampled):
        y = owner_arr == j
        if y.all() or not y.any():
            continue
        s = z[:, j].numpy()
        rng = np.random.default_rng(j)
        neg = rng.choice(np.flatnonzero(~y), min(int(y.sum()), int((~y).sum())), replace=False)
        pred_pos, pred_neg = s[y] >= float(z_threshold[index[c]]), s[neg] >= float(z_threshold[index[c]])
        tp, fp = pred_pos.sum(), pred_neg.sum()
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / y.sum()
        out[c] = {
            "auroc": round(float(roc_auc_score(y, s)), 4),
            "precision": round(float(precision), 4),
            "recall": round(float(recall), 4),
            "f1": round(float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0, 4),
            "n_pos": int(y.sum()),
            "n_neg": len(neg),
        }
    return out
