"""Compare probe recipes on dev data written by others than the training data: results/recipe_compare.json.

nice -n 10 python -m experiments.recipe_compare --old-pack probes/gemma-3-270m/sumo-wordnet-v1+safety-v1
(after `python -m experiments.recipe_data`; resumable: each finished recipe is written to the JSON
at once, and a rerun with the same grid computes only the missing ones)

Every recipe trains on the same cached token states (hatcat/training/states.py) for the 42 dev
concepts and their negatives, with control-corpus (dev part) tokens as background negatives, and
is scored on the project's natural scenes (each implies its concept without naming it):
- estimator: difference of means (`dom`), shrunk LDA (`lda`, the old pack's), logistic;
- pooling of a training text: its last token, its mean (or every token as a row: `--pooling all`);
- k: training texts per concept (1 or 3);
- continuations: with or without the model's own continuations of a prompt about the concept
  (re-encoded without the prompt) as extra positives (`True`), or as positives of their concept
  and hard negatives of every other dev concept (`"contrast"`: the style of generated prose
  is then no evidence for any one concept).
Scores are standardised on control tokens (hatcat/training/signal.py) so that top-1 among the
42 concepts compares like with like. A scene's score is read three ways: at its last token (the
response-level `last_activation`), as the mean over its tokens (`mean_activation`) and the max.
Words-only detectors get the same recipe on the monitor's words features. Divergence definitions
are compared on the implied/named pairs: the capped residual (shipped), uncapped, the residual of
a per-concept least-squares regression of z on z_words fitted on control tokens (`regressed`),
and the old difference of probabilities.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import product
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from experiments.recipe_data import TAP_LAYER, continuation_file, dev_plan, dev_scenes, divergence_pairs
from hatcat.concepts import load_pack
from hatcat.config import Settings
from hatcat.train import DEFAULT_MELDS
from hatcat.training.fit import Rows
from hatcat.training.recipe import control_texts, training_texts
from hatcat.training.run import pack_directions
from hatcat.training.signal import (
    control_thresholds,
    directions,
    standardise_on_control,
)
from hatcat.training.states import TokenStateCache, words_windows

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "recipe_compare.json"
EMOTIONS = ["Anger", "Fear", "Sadness", "Joy", "Disgust", "Embarrassment"]


class WordsOnly:
    """The embedded model's tokenizer and (scaled) input embeddings only: what words features need,
    without loading the decoder (the token states come from the cache)."""

    def __init__(self, settings: Settings) -> None:
        from safetensors import safe_open
        from transformers import AutoTokenizer

        from hatcat.model import _converted_gguf, _embedded_gguf

        folder, _ = _converted_gguf(*_embedded_gguf(settings.model_name, settings.cache_dir), settings.cache_dir)
        config = json.loads((folder / "config.json").read_text())
        with safe_open(folder / "model.safetensors", "pt") as f:
            weight = f.get_tensor("model.embed_tokens.weight").float() * config["hidden_size"] ** 0.5  # Gemma's scale
        self.model = torch.nn.Module()
        self.model.get_input_embeddings = lambda: self._embed
        self._embed = torch.nn.Embedding.from_pretrained(weight)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.name = settings.model_name


class Features:
    """Token states (activation side) and words windows (text side) per text."""

    def __init__(self, cache: TokenStateCache, loaded) -> None:
        self.cache, self.loaded, self.words = cache, loaded, {}

    def act(self, text: str) -> torch.Tensor:
        return self.cache.get(text)

    def text(self, text: str) -> torch.Tensor:
        if text not in self.words:
            self.words[text] = words_windows(self.loaded.model, self.loaded.tokenizer, text)
        return self.words[text]


def pooled(rows: list[torch.Tensor], pooling: str) -> tuple[torch.Tensor, list[int]]:
    """Stack one text's states as training rows; returns (rows, count per text)."""
    if pooling == "last":
        return torch.stack([r[-1] for r in rows]), [1] * len(rows)
    if pooling == "mean":
        return torch.stack([r.mean(0) for r in rows]), [1] * len(rows)
    return torch.cat(rows), [len(r) for r in rows]


def build_rows(
    side, concepts, texts_of, neg, background_texts, pooling, contrast: tuple[str, ...] = ()
) -> tuple[torch.Tensor, Rows, torch.Tensor]:
    """Feature matrix and Rows: concept texts (pooled), then every control token (background).
    `contrast` texts (among the concepts' texts) are hard negatives of every concept they do not teach."""
    order = list(dict.fromkeys(t for c in concepts for t in texts_of[c]))
    x, counts = pooled([side(t) for t in order], pooling)
    start = np.concatenate([[0], np.cumsum(counts)])
    span = {t: np.arange(start[i], start[i + 1]) for i, t in enumerate(order)}
    index = {c: i for i, c in enumerate(concepts)}
    rows_of = lambda cs: np.unique(
        np.concatenate([span[t] for c in cs if c in index for t in texts_of[c]] or [[]])
    ).astype(np.int64)
    background = torch.cat([side(t) for t in background_texts])
    n = len(x)
    shared = np.unique(np.concatenate([span[t] for t in contrast] or [[]])).astype(np.int64)
    rows = Rows(
        pos=[rows_of([c]) for c in concepts],
        hard=[np.union1d(rows_of(neg[c][0]), shared) if c in neg else np.zeros(0, np.int64) for c in concepts],
        easy=[rows_of(neg[c][1]) if c in neg else np.zeros(0, np.int64) for c in concepts],
        background=np.arange(n, n + len(background)),
    )
    return torch.cat([x, background]), rows, background


def subset(rows: Rows, keep: list[int]) -> Rows:
    """The Rows of some concepts only (row indices unchanged)."""
    return Rows(
        [rows.pos[i] for i in keep], [rows.hard[i] for i in keep], [rows.easy[i] for i in keep], rows.background
    )


def scene_labels(scenes: dict[str, list[str]], dev: list[str]) -> tuple[list[str], np.ndarray]:
    """The dev concepts' scenes in concept order, and each one's concept index in `dev`."""
    texts = [s for c in dev for s in scenes[c]]
    return texts, np.repeat(np.arange(len(dev)), [len(scenes[c]) for c in dev])


def read_outs(w, b, side, texts, control) -> dict[str, np.ndarray]:
    """Each text's control-standardised scores [n_texts, N]: at its last token, the mean and the max over tokens."""
    w, b = standardise_on_control(w, b, control)
    z = [side(t) @ w.T + b for t in texts]  # [T, N] per text
    reduce = {"last": lambda zi: zi[-1], "mean": lambda zi: zi.mean(0), "max": lambda zi: zi.max(0).values}
    return {pool: torch.stack([fn(zi) for zi in z]).numpy() for pool, fn in reduce.items()}


def evaluate(w, b, side, scenes, dev, control) -> dict:
    """AUROC / top-1 over the dev concepts' scenes (last token, mean and max over tokens), emotions apart."""
    texts, label = scene_labels(scenes, dev)
    s = read_outs(w, b, side, texts, control)
    out = {pool: scene_scores(s[pool], label, dev) for pool in s}
    ws, bs = standardise_on_control(w, b, control)
    threshold = control_thresholds(control @ ws.T + bs, 0.01).numpy()
    out["recall_at_control_fpr_0.01"] = round(
        float(np.mean(s["max"][np.arange(len(texts)), label] >= threshold[label])), 4
    )
    return out


def scene_scores(s: np.ndarray, label: np.ndarray, dev: list[str]) -> dict:
    """Mean AUROC and top-1 of scores s [n_texts, len(dev)] over all dev concepts, and among the emotions apart."""
    out = _scores(s, label, list(range(len(dev))))
    emo = [dev.index(e) for e in EMOTIONS]
    keep = np.isin(label, emo)
    out["emotions"] = _scores(s[keep], label[keep], emo)
    return out


def _scores(s: np.ndarray, label: np.ndarray, concepts: list[int]) -> dict:
    aurocs = [roc_auc_score(label == c, s[:, c]) for c in concepts]
    top1 = float(np.mean(np.array(concepts)[s[:, concepts].argmax(1)] == label))
    return {"mean_auroc": round(float(np.mean(aurocs)), 4), "top1": round(top1, 4), "n_concepts": len(concepts)}


def regression_on_words(z: torch.Tensor, z_words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per concept (slope, intercept) of the least-squares fit z ~ slope * z_words + intercept over
    control tokens ([n, N] each): what the words alone predict of the activation score."""
    zw = z_words - z_words.mean(0)
    slope = (zw * (z - z.mean(0))).sum(0) / (zw * zw).sum(0).clamp(min=1e-6)
    return slope, z.mean(0) - slope * z_words.mean(0)


def divergence_eval(w, b, detector, z_threshold, fa, ft, pairs, concepts, fit) -> dict:
    """AUROC implied vs named (the pair's concept) of four divergence definitions, all on control-
    standardised scores: capped (min(z, z_threshold) - z_words, the shipped one), uncapped (z - z_words),
    regressed (z minus its least-squares prediction from z_words on control tokens: `fit`, per concept
    (slope, intercept)) and the old difference of probabilities."""
    idx = {c: i for i, c in enumerate(concepts)}
    tw, tb = detector
    slope, intercept = fit
    kinds = {
        "capped": lambda z, zw, c: torch.minimum(z, z_threshold[c]) - zw,
        "uncapped": lambda z, zw, c: z - zw,
        "regressed": lambda z, zw, c: z - (slope[c] * zw + intercept[c]),
        "probability_difference": lambda z, zw, c: torch.sigmoid(z - 3) - torch.sigmoid(zw - 3),
    }
    out = {}
    for name, fn in kinds.items():
        for pool in ("last", "mean"):
            vals = {"implied": [], "named": []}
            for p in pairs:
                if p["concept"] not in idx:
                    continue
                c = idx[p["concept"]]
                for kind, got in vals.items():
                    d = fn(fa(p[kind]) @ w[c] + b[c], ft(p[kind]) @ tw[c] + tb[c], c)
                    got.append(float(d[-1] if pool == "last" else d.mean()))
            y = [1] * len(vals["implied"]) + [0] * len(vals["named"])
            out[f"{name}_{pool}"] = round(roc_auc_score(y, vals["implied"] + vals["named"]), 4)
    out["n_pairs"] = len(vals["implied"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.recipe_compare", description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, nargs="+", default=[1, 3], help="training texts per concept")
    ap.add_argument("--pooling", nargs="+", default=["last", "mean"], choices=["last", "mean", "all"])
    ap.add_argument("--methods", nargs="+", default=["dom", "lda", "logistic"], choices=["dom", "lda", "logistic"])
    ap.add_argument("--old-pack", default=None, metavar="PACK", help="the pack shipped before (the one-matrix LDA row)")
    args = ap.parse_args(argv)
    t0 = time.time()
    settings = Settings.from_env()
    pack = load_pack(None, melds=DEFAULT_MELDS)
    concepts, neg = dev_plan(pack)
    scenes = dev_scenes()
    dev = list(scenes)
    loaded = WordsOnly(settings)
    cache = TokenStateCache(settings.cache_dir, loaded.name, TAP_LAYER)
    f = Features(cache, loaded)
    path = continuation_file(settings.cache_dir)
    conts = json.loads(path.read_text()) if path.is_file() else {}
    control = control_texts("dev")
    pairs = divergence_pairs()
    ctl = torch.cat([f.act(t) for t in control])
    words_ctl = torch.cat([f.text(t) for t in control])
    done = {_key(r): r for r in (json.loads(OUT.read_text())["recipes"] if OUT.is_file() else [])}
    results: list[dict] = []

    def finish(row: dict) -> None:
        results.append(row)
        _write(results, t0, complete=False)
        a = row["activation"]
        print(_key(row), a["last"], a["mean"], row.get("words_only", {}).get("last"), flush=True)

    if args.old_pack:  # the current recipe: one-matrix LDA over every training template (~12 per concept)
        row = {
            "method": "lda (shipped pack, all templates)",
            "pooling": "last",
            "k_texts": None,
            "continuations": False,
        }
        if _key(row) in done:
            results.append(done[_key(row)])
        else:
            w, b = pack_directions(args.old_pack, dev)
            row["activation"] = evaluate(w, b, f.act, scenes, dev, ctl)
            tw, tb = pack_directions(args.old_pack, dev, side="text")
            row["words_only"] = evaluate(tw, tb, f.text, scenes, dev, words_ctl)
            # divergence on every pair (the shipped pack has all 24 pair concepts): its own words-only detector
            named = sorted({p["concept"] for p in pairs})
            row["divergence_implied_vs_named"] = _divergence(
                *pack_directions(args.old_pack, named),
                pack_directions(args.old_pack, named, side="text"),
                ctl,
                words_ctl,
                f,
                pairs,
                named,
            )
            finish(row)
    for pooling, k, use_cont, method in product(args.pooling, args.k, (False, True, "contrast"), args.methods):
        row = {"method": method, "pooling": pooling, "k_texts": k, "continuations": use_cont}
        if method == "logistic" and (pooling == "all" or use_cont == "contrast"):
            continue  # per-concept fits: too slow (every token row) or already behind (contrast) to compare here
        if _key(row) in done:
            results.append(done[_key(row)])
            continue
        texts_of = {
            c: training_texts(pack[c], k) + ([t for t in conts.get(c, []) if t] if use_cont else []) for c in concepts
        }
        sub = [concepts.index(c) for c in dev]
        contrast = tuple(t for ts in conts.values() for t in ts if t) if use_cont == "contrast" else ()
        act_x, act_rows, _ = build_rows(f.act, concepts, texts_of, neg, control, pooling, contrast)
        w, b = directions(act_x, subset(act_rows, sub), method)
        del act_x
        txt_x, txt_rows, _ = build_rows(f.text, concepts, texts_of, neg, control, pooling, contrast)
        tw, tb = directions(txt_x, subset(txt_rows, sub), method)
        del txt_x
        row["activation"] = evaluate(w, b, f.act, scenes, dev, ctl)
        row["words_only"] = evaluate(tw, tb, f.text, scenes, dev, words_ctl)
        row["divergence_implied_vs_named"] = _divergence(w, b, (tw, tb), ctl, words_ctl, f, pairs, dev)
        finish(row)
    _write(results, t0, complete=True)
    print(json.dumps(json.loads(OUT.read_text())["chosen"]))
    return 0


def _divergence(w, b, detector, ctl, words_ctl, f, pairs, concepts) -> dict:
    """Divergence definitions on the pairs, every score standardised on the control corpus's dev tokens."""
    ws, bs = standardise_on_control(w, b, ctl)
    tw, tb = standardise_on_control(*detector, words_ctl)
    z, zw = ctl @ ws.T + bs, words_ctl @ tw.T + tb
    zthr = control_thresholds(z, 0.01)
    return divergence_eval(ws, bs, (tw, tb), zthr, f.act, f.text, pairs, concepts, regression_on_words(z, zw))


def _key(row: dict) -> str:
    return f"{row['method']}|{row['pooling']}|{row['k_texts']}|{row['continuations']}"


def _score(row: dict, pool: str) -> float:
    a = row["activation"][pool]
    return a["mean_auroc"] + a["top1"]


def _write(results: list[dict], t0: float, complete: bool) -> None:
    """The comparison so far; with every recipe done, the choice (on dev only)."""
    best = max(((r, p) for r in results for p in ("last", "mean")), key=lambda rp: _score(*rp))
    doc = {
        "command": "nice -n 10 python -m experiments.recipe_compare --old-pack probes/gemma-3-270m/sumo-wordnet-v1+safety-v1",
        "data": "dev: data/eval/natural_scenes.yaml (42 concepts x 6 scenes, HatCat authors), data/eval/divergence_pairs.yaml; "
        "background negatives and score standardisation: data/signal/control.yaml dev part",
        "tap_layer": TAP_LAYER,
        "selection_rule": "highest mean AUROC + 42-way top-1 on the dev scenes, over recipes and the response-level "
        "read-out (last token or mean over tokens)",
        "complete": complete,
        "chosen": {**{k: best[0][k] for k in ("method", "pooling", "k_texts", "continuations")}, "read_out": best[1]}
        if complete
        else None,
        "recipes": results,
        "seconds": round(time.time() - t0, 1),
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
