"""What limits concept recognition: the model's states or the training text? -> results/probe_ceiling.json

nice -n 19 python -m experiments.probe_ceiling [--layers 6 9 12 15]
(after `python -m experiments.recipe_data`: block 15's states of the dev scenes and the control
corpus come from its cache; other blocks' states of the 252 dev scenes are added to the same cache)

Dev data only: the project's natural scenes (data/eval/natural_scenes.yaml, 42 concepts x 6 texts,
the six emotions among them); no test set is read. Every reader is scored the same way: per concept
AUROC of its score on its own scenes against all other scenes, 42-way top-1, and among the six
emotions (their 36 scenes) AUROC and 6-way top-1, at a scene's last token and as the mean over its
tokens (a linear probe's mean score is its score of the mean state):
(a) the shipped pack's activation rows (block 15), standardised on the control corpus's dev tokens,
    as in experiments.recipe_compare;
(b) words only: the pack's words-only detectors, and in-distribution probes on the words features;
(c) in-distribution probes fitted on the dev scenes themselves, cross-validated by text: fold i
    holds out the i-th scene of every concept (`text_folds`), so no text is in both parts of a split
    and each concept trains on its other five scenes; a learning curve trains on 1-5 of them
    (`text_splits`) to show whether five scenes per concept are what holds the probe back;
(d) the pack's 42 scores recombined: the same cross-validated logistic read-out on the pack's
    standardised scores (does the pack hold the information but scale or mix it badly?).
Estimators (scikit-learn, fixed before the run, nothing tuned): difference of means (LDA with
shrinkage 1, i.e. identity covariance), shrunk LDA (shrinkage 0.2, the pack's), multinomial
logistic regression (C=1), each after standardising the features on the training part; scores are
cross-validated log posteriors. If (c) is far above (a), the states support the targets and the
limit is the ontology-derived training text; if (c) is close to (a), block-15 states limit it.
Top-1 errors are listed with the share that lands on an ancestor or descendant of the right concept
(e.g. Murder read as CriminalAction: the labels overlap, not the states).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections import Counter

import numpy as np
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from experiments.recipe_compare import Features, WordsOnly, pooled, read_outs, scene_labels, scene_scores
from experiments.recipe_data import TAP_LAYER, dev_scenes
from hatcat.concepts import load_pack
from hatcat.config import Settings
from hatcat.paths import RESULTS, ROOT
from hatcat.train import DEFAULT_MELDS
from hatcat.training.prompts import related
from hatcat.training.recipe import control_texts
from hatcat.training.run import pack_directions
from hatcat.training.states import TokenStateCache, extract_states

OUT = RESULTS / "probe_ceiling.json"
PACK = ROOT / "probes" / "gemma-3-270m" / "sumo-wordnet-v1+safety-v1"
POOLS = ("last", "mean")
BOOTSTRAP = 2000
CURVE = (1, 2, 3, 4, 5)  # training scenes per concept in the learning curve

ESTIMATORS = {
    "dom": lambda: LinearDiscriminantAnalysis(solver="lsqr", shrinkage=1.0),
    "lda": lambda: LinearDiscriminantAnalysis(solver="lsqr", shrinkage=0.2),
    "logistic": lambda: LogisticRegression(C=1.0, max_iter=5000),
}


def text_folds(scenes: dict[str, list[str]]) -> np.ndarray:
    """Each scene's fold (concept order): its position among its concept's scenes. A text that occurs
    more than once keeps its first occurrence's fold, so no text is in both parts of a split."""
    first: dict[str, int] = {}
    return np.array([first.setdefault(t, i) for texts in scenes.values() for i, t in enumerate(texts)])


def text_splits(folds: np.ndarray, k: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, held out) index pairs, one per fold: fold i is held out and the probe trains on the
    other folds, or with `k` on the k folds after i (cyclically): k scenes per concept."""
    n = int(folds.max()) + 1
    train_folds = lambda i: [j for j in range(n) if j != i] if k is None else [(i + 1 + j) % n for j in range(k)]
    return [(np.flatnonzero(np.isin(folds, train_folds(i))), np.flatnonzero(folds == i)) for i in range(n)]


def cv_log_posteriors(
    x: np.ndarray, label: np.ndarray, folds: np.ndarray, method: str, k: int | None = None
) -> np.ndarray:
    """Held-out log posteriors [n_texts, n_concepts]: every text scored by a probe fitted without it."""
    model = make_pipeline(StandardScaler(), ESTIMATORS[method]())
    with warnings.catch_warnings():  # one scene per concept (k=1) is as many classes as rows: intended
        warnings.filterwarnings("ignore", "The number of unique classes", UserWarning)
        return cross_val_predict(model, x, label, cv=text_splits(folds, k), method="predict_log_proba")


def pool_states(states: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """One row per text: its last token's state and its mean state."""
    return {pooling: pooled(states, pooling)[0].numpy() for pooling in ("last", "mean")}


def top1_gain(s: np.ndarray, base: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> dict:
    """42-way top-1 of scores s minus that of base on the same texts, with a paired bootstrap 95% interval."""
    diff = (s.argmax(1) == label).astype(float) - (base.argmax(1) == label)
    boot = diff[rng.integers(0, len(diff), (BOOTSTRAP, len(diff)))].mean(1)
    return {
        "diff": round(float(diff.mean()), 4),
        "ci95": [round(float(q), 4) for q in np.quantile(boot, [0.025, 0.975])],
    }


def confusions(s: np.ndarray, label: np.ndarray, dev: list[str], pack) -> dict:
    """Top-1 errors: how many, the share whose guess is an ancestor or descendant of the right concept,
    and the most frequent (right, guessed) pairs."""
    pred = s.argmax(1)
    wrong = [(dev[t], dev[p]) for t, p in zip(label, pred) if t != p]
    overlap = [g in related(pack, c) for c, g in wrong]
    return {
        "errors": len(wrong),
        "share_to_ancestor_or_descendant": round(float(np.mean(overlap)), 4) if wrong else 0.0,
        "most_common": [[c, g, n] for (c, g), n in Counter(wrong).most_common(10)],
    }


def scene_states(settings: Settings, texts: list[str], layers: list[int]) -> dict[int, list[torch.Tensor]]:
    """Token states of the texts per block, from the token-state cache; missing ones are extracted first."""
    caches = {layer: TokenStateCache(settings.cache_dir, settings.model_name, layer) for layer in layers}
    if any(cache.missing(texts) for cache in caches.values()):
        from hatcat.model import load_model

        loaded = load_model(
            settings.model_name, settings.device, settings.dtype, settings.cache_dir, settings.hf_offline
        )
        for cache in caches.values():
            extract_states(loaded.model, loaded.tokenizer, texts, cache)
        del loaded
    return {layer: [cache.get(t) for t in texts] for layer, cache in caches.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.probe_ceiling", description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[6, 9, 12, TAP_LAYER], help="decoder blocks to probe")
    args = ap.parse_args(argv)
    t0 = time.time()
    rng = np.random.default_rng(0)
    settings = Settings.from_env()
    scenes = dev_scenes()
    dev = list(scenes)
    texts, label = scene_labels(scenes, dev)
    folds = text_folds(scenes)
    states = scene_states(settings, texts, sorted(set(args.layers) | {TAP_LAYER}))

    # (a) and (b): the shipped pack's rows, read as in experiments.recipe_compare
    f = Features(TokenStateCache(settings.cache_dir, settings.model_name, TAP_LAYER), WordsOnly(settings))
    control = control_texts("dev")
    ctl = torch.cat([f.act(t) for t in control])
    words_ctl = torch.cat([f.text(t) for t in control])
    pack = read_outs(*pack_directions(str(PACK), dev), f.act, texts, ctl)
    pack_words = read_outs(*pack_directions(str(PACK), dev, side="text"), f.text, texts, words_ctl)
    del ctl, words_ctl

    scores: dict[tuple[str, str, str], np.ndarray] = {}  # (block or "words", method, read-out) -> held-out scores

    def probes(name: str, features: dict[str, np.ndarray]) -> dict:
        out = {}
        for method in ESTIMATORS:
            out[method] = {}
            for pool in POOLS:
                s = scores[name, method, pool] = cv_log_posteriors(features[pool], label, folds, method)
                out[method][pool] = {
                    **scene_scores(s, label, dev),
                    "top1_minus_pack": top1_gain(s, pack[pool], label, rng),
                }
            print(name, method, {p: (out[method][p]["mean_auroc"], out[method][p]["top1"]) for p in POOLS}, flush=True)
        return out

    words_cv = probes("words", pool_states([f.text(t) for t in texts]))
    in_distribution = {str(layer): probes(str(layer), pool_states(states[layer])) for layer in args.layers}
    best = max(
        ((layer, m, p) for layer, rows in in_distribution.items() for m in rows for p in POOLS),
        key=lambda k: in_distribution[k[0]][k[1]][k[2]]["mean_auroc"] + in_distribution[k[0]][k[1]][k[2]]["top1"],
    )
    curve = {}
    for layer in dict.fromkeys([str(TAP_LAYER), best[0]]):
        x = pool_states(states[int(layer)])[best[2]]
        curve[layer] = {
            k: scene_scores(
                scores[layer, best[1], best[2]] if k == max(CURVE) else cv_log_posteriors(x, label, folds, best[1], k),
                label,
                dev,
            )
            for k in CURVE
        }
        print(f"learning curve, block {layer}:", {k: (r["mean_auroc"], r["top1"]) for k, r in curve[layer].items()})
    recombined = {}
    for pool in POOLS:
        s = cv_log_posteriors(pack[pool], label, folds, "logistic")
        recombined[pool] = {**scene_scores(s, label, dev), "top1_minus_pack": top1_gain(s, pack[pool], label, rng)}
    ontology = load_pack(None, melds=DEFAULT_MELDS)
    doc = {
        "command": "nice -n 19 python -m experiments.probe_ceiling --layers " + " ".join(map(str, args.layers)),
        "data": "dev only: data/eval/natural_scenes.yaml (42 concepts x 6 scenes, HatCat authors); pack scores "
        "standardised on data/signal/control.yaml dev part; no test set read",
        "cross_validation": "6 folds by text: fold i holds out the i-th scene of every concept (210 train / 42 held out)",
        "estimators": "scikit-learn after StandardScaler: dom = LDA shrinkage 1 (identity covariance), "
        "lda = LDA shrinkage 0.2, logistic = multinomial LogisticRegression C=1; scores: held-out log posteriors",
        "pack": str(PACK.relative_to(ROOT)),
        "tap_layer_of_pack": TAP_LAYER,
        "a_shipped_pack": {pool: scene_scores(pack[pool], label, dev) for pool in POOLS},
        "b_words_only": {
            "pack_detectors": {pool: scene_scores(pack_words[pool], label, dev) for pool in POOLS},
            "in_distribution_cv": words_cv,
        },
        "c_in_distribution_cv": in_distribution,
        "d_pack_scores_recombined_cv": recombined,
        "learning_curve": {
            "what": f"the best in-distribution probe ({best[1]}, {best[2]} read-out) trained on k scenes per concept "
            "(k = 1..5), scored on the same held-out texts; per block",
            **curve,
        },
        "best_in_distribution": {
            "layer": int(best[0]),
            "method": best[1],
            "read_out": best[2],
            **in_distribution[best[0]][best[1]][best[2]],
        },
        "top1_errors": {
            "a_shipped_pack_mean": confusions(pack["mean"], label, dev, ontology),
            "best_in_distribution": confusions(scores[best], label, dev, ontology),
        },
        "seconds": round(time.time() - t0, 1),
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: doc[k] for k in ("a_shipped_pack", "best_in_distribution")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
