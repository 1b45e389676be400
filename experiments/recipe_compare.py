"""Compare probe recipes on dev data written by others than the training data: results/recipe_compare.json.

python -m experiments.recipe_compare [--k 1 2 3 4] [--old-pack PACK]   # after `python -m experiments.recipe_data`

Every recipe trains on the same cached token states (hatcat/training/states.py) for the 42 dev
concepts and their negatives, with control-corpus (dev part) tokens as background negatives, and
is scored on the project's natural scenes (each implies its concept without naming it):
- estimator: difference of means (`dom`), shrunk LDA (`lda`, the old pack's), logistic;
- pooling of a training text: its last token, its mean, or every token as a row;
- k: training texts per concept (3 or 4);
- continuations: with or without the model's own continuations of a prompt about the concept
  (re-encoded without the prompt) as extra positives.
Scores are standardised on control tokens (hatcat/training/signal.py) so that top-1 among the
42 concepts compares like with like. Words-only detectors get the same recipe on the monitor's
words features. Divergence definitions (capped residual, uncapped, the old difference of
probabilities) are compared on the implied/named pairs.
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

from experiments.recipe_data import K_TEXTS, TAP_LAYER, continuation_file, dev_plan, dev_scenes, divergence_pairs
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
    unwhiten,
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


def build_rows(side, concepts, texts_of, neg, background_texts, pooling) -> tuple[torch.Tensor, Rows, torch.Tensor]:
    """Feature matrix and Rows: concept texts (pooled), then every control token (background)."""
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
    rows = Rows(
        pos=[rows_of([c]) for c in concepts],
        hard=[rows_of(neg[c][0]) if c in neg else np.zeros(0, np.int64) for c in concepts],
        easy=[rows_of(neg[c][1]) if c in neg else np.zeros(0, np.int64) for c in concepts],
        background=np.arange(n, n + len(background)),
    )
    return torch.cat([x, background]), rows, background


def subset(rows: Rows, keep: list[int]) -> Rows:
    """The Rows of some concepts only (row indices unchanged)."""
    return Rows(
        [rows.pos[i] for i in keep], [rows.hard[i] for i in keep], [rows.easy[i] for i in keep], rows.background
    )


def evaluate(w, b, side, scenes, dev, control) -> dict:
    """AUROC / top-1 over the dev concepts' scenes (last token and max over tokens), emotions apart."""
    w, b = standardise_on_control(w, b, control)
    texts = [s for c in dev for s in scenes[c]]
    label = np.repeat(np.arange(len(dev)), [len(scenes[c]) for c in dev])
    z = [side(t) @ w.T + b for t in texts]  # [T, N] per scene
    threshold = control_thresholds(control @ w.T + b, 0.01)
    out = {}
    for pool in ("last", "max"):
        s = torch.stack([zi[-1] if pool == "last" else zi.max(0).values for zi in z]).numpy()
        out[pool] = _scores(s, label, list(range(len(dev))))
        emo = [dev.index(e) for e in EMOTIONS]
        keep = np.isin(label, emo)
        out[pool]["emotions"] = _scores(s[keep], label[keep], emo)
    zmax = torch.stack([zi.max(0).values for zi in z])
    out["recall_at_control_fpr_0.01"] = round(
        float((zmax[np.arange(len(texts)), label] >= threshold[label]).float().mean()), 4
    )
    return out


def _scores(s: np.ndarray, label: np.ndarray, concepts: list[int]) -> dict:
    aurocs = [roc_auc_score(label == c, s[:, c]) for c in concepts]
    top1 = float(np.mean(np.array(concepts)[s[:, concepts].argmax(1)] == label))
    return {"mean_auroc": round(float(np.mean(aurocs)), 4), "top1": round(top1, 4), "n_concepts": len(concepts)}


def divergence_eval(w, b, detector, z_threshold, fa, ft, pairs, concepts) -> dict:
    """AUROC implied vs named (the pair's concept) of three divergence definitions, all on control-
    standardised scores: capped (min(z, z_threshold) - z_words, the shipped one), uncapped (z - z_words)
    and the old difference of probabilities."""
    idx = {c: i for i, c in enumerate(concepts)}
    tw, tb = detector
    kinds = {
        "capped": lambda z, zw, c: torch.minimum(z, z_threshold[c]) - zw,
        "uncapped": lambda z, zw, c: z - zw,
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
    ap.add_argument("--k", type=int, nargs="+", default=list(range(1, K_TEXTS + 1)), help="training texts per concept")
    ap.add_argument("--pooling", nargs="+", default=["last", "mean", "all"], choices=["last", "mean", "all"])
    ap.add_argument("--old-pack", default=None, metavar="PACK", help="the pack shipped before (the one-matrix LDA row)")
    args = ap.parse_args(argv)
    ks = args.k
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
    results = []
    old = pack_directions(args.old_pack, dev) if args.old_pack else None
    if old is not None:  # the current recipe: one-matrix LDA over every training template (~12 per concept)
        w, b = old
        row = {
            "method": "lda (shipped pack, all templates)",
            "pooling": "last",
            "k_texts": None,
            "continuations": False,
        }
        ctl = torch.cat([f.act(t) for t in control])
        row["activation"] = evaluate(w, b, f.act, scenes, dev, ctl)
        # divergence on every pair (the shipped pack has all 24 pair concepts): its own words-only detector
        named = sorted({p["concept"] for p in pairs})
        ws, bs = standardise_on_control(*pack_directions(args.old_pack, named), ctl)
        words_ctl = torch.cat([f.text(t) for t in control])
        detector = standardise_on_control(*pack_directions(args.old_pack, named, side="text"), words_ctl)
        zthr = control_thresholds(ctl @ ws.T + bs, 0.01)
        row["divergence_implied_vs_named"] = divergence_eval(ws, bs, detector, zthr, f.act, f.text, pairs, named)
        results.append(row)
        print(row["method"], row["activation"]["last"], row["divergence_implied_vs_named"], flush=True)
        # the same rows turned into differences of means: Sigma estimated on template-like rows (the
        # dev concepts' training texts, last token, plus every token of them as background)
        texts = [t for c in concepts for t in training_texts(pack[c], min(ks))]
        sample = torch.cat([torch.stack([f.act(t)[-1] for t in texts]), *(f.act(t) for t in texts)])
        row = {
            "method": "dom (shipped LDA rows unwhitened)",
            "pooling": "last",
            "k_texts": None,
            "continuations": False,
        }
        row["activation"] = evaluate(unwhiten(w, sample), b, f.act, scenes, dev, torch.cat([f.act(t) for t in control]))
        results.append(row)
        print(row["method"], row["activation"]["last"], flush=True)
    for pooling, k, use_cont in product(args.pooling, ks, (False, True)):
        texts_of = {
            c: training_texts(pack[c], k) + ([t for t in conts.get(c, []) if t] if use_cont else []) for c in concepts
        }
        act_x, act_rows, act_bg = build_rows(f.act, concepts, texts_of, neg, control, pooling)
        txt_x, txt_rows, txt_bg = build_rows(f.text, concepts, texts_of, neg, control, pooling)
        for method in ("dom", "lda", "logistic"):
            if method == "logistic" and pooling == "all":
                continue  # per-concept fits over every token row: too slow to compare here
            sub = [concepts.index(c) for c in dev]
            w, b = directions(act_x, subset(act_rows, sub), method)
            tw, tb = directions(txt_x, subset(txt_rows, sub), method)
            row = {
                "method": method,
                "pooling": pooling,
                "k_texts": k,
                "continuations": use_cont,
                "activation": evaluate(w, b, f.act, scenes, dev, act_bg),
                "words_only": evaluate(tw, tb, f.text, scenes, dev, txt_bg),
            }
            ws, bs = standardise_on_control(w, b, act_bg)
            detector = standardise_on_control(tw, tb, txt_bg)
            zthr = control_thresholds(act_bg @ ws.T + bs, 0.01)
            row["divergence_implied_vs_named"] = divergence_eval(ws, bs, detector, zthr, f.act, f.text, pairs, dev)
            results.append(row)
            a = row["activation"]
            print(
                method,
                pooling,
                k,
                use_cont,
                a["last"],
                a["max"]["top1"],
                row["words_only"]["last"]["mean_auroc"],
                row["divergence_implied_vs_named"],
                flush=True,
            )
    best = max(results, key=lambda r: r["activation"]["last"]["mean_auroc"] + r["activation"]["last"]["top1"])
    doc = {
        "command": "python -m experiments.recipe_compare",
        "data": "dev: data/eval/natural_scenes.yaml (42 concepts x 6 scenes, HatCat authors), data/eval/divergence_pairs.yaml; "
        "background negatives and score standardisation: data/signal/control.yaml dev part",
        "tap_layer": TAP_LAYER,
        "selection_rule": "highest last-token mean AUROC + 42-way top-1 on the dev scenes",
        "chosen": {k: best[k] for k in ("method", "pooling", "k_texts", "continuations")},
        "recipes": results,
        "seconds": round(time.time() - t0, 1),
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc["chosen"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
