"""Signal validity of a probe pack, measured through a real server's /v1/analyze: results/signal_eval.json.

python -m experiments.signal_eval [--pack probes/gemma-3-270m/sumo-wordnet-v1+safety-v1]

Writes the JSON, then regenerates the README's results table (`python -m experiments.report`).

Sets (data/eval/README.md, data/signal/, sources in data/NOTICE):
- test: WordNet example sentences (Princeton's lexicographers) for concepts outside the dev set;
  the control corpus's test part (fortune files of other collections and authors); the emotion
  scenes (six emotions, five registers, emotion implied) and implied-vs-named pairs of
  data/signal/, written by a helper who had read neither the dev data nor the training templates;
- dev (the recipe was chosen on these): the natural scenes (42 concepts, six emotions) and the
  divergence pairs, written by the HatCat authors.
Per text the response-level score is the read-out chosen on dev by `experiments.recipe_compare`
(`chosen.read_out` in results/recipe_compare.json: `mean_activation`, the mean over the text's
tokens, or `last_activation`, the state after the whole text); the words-only side is the same
statistic of the text similarity (`mean_text_similarity` / `last_text_similarity`). Per concept AUROC: its texts against the other
concepts' texts of the same set; top-1: the concept with the highest score among the set's.
On control text: the share of tokens whose colour (the token's `max_divergence`) lies beyond the
colour scale's midpoint (|d| >= 0.5), and the per-concept threshold FPR on held-out control tokens
(from the pack's metrics.json, computed by the same bank at training time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import yaml
from sklearn.metrics import roc_auc_score

from experiments.report import README, render, signal_rows
from hatcat.training.recipe import control_texts
from tests.support import start_app, stop_app

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "signal_eval.json"
PACK = ROOT / "probes" / "gemma-3-270m" / "sumo-wordnet-v1+safety-v1"
EMOTIONS = ["Anger", "Fear", "Sadness", "Joy", "Disgust", "Embarrassment"]
RECIPES = ROOT / "results" / "recipe_compare.json"
SIGNAL = ROOT / "data" / "signal"


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def chosen_read_out() -> str:
    """The response-level read-out chosen on dev (results/recipe_compare.json), else `last`."""
    doc = json.loads(RECIPES.read_text()) if RECIPES.is_file() else {}
    return (doc.get("chosen") or {}).get("read_out", "last")


class Offline:
    """The same documents from cached token states (`--offline`): the bank's `scores` and the
    monitor's `records`, as /v1/analyze computes them, without a server or a forward pass."""

    def __init__(self, pack: Path) -> None:
        from experiments.recipe_compare import WordsOnly
        from hatcat.analysis import STAT_NAMES
        from hatcat.concepts import load_pack
        from hatcat.config import Settings
        from hatcat.monitor import Monitor
        from hatcat.probes import ProbeBank, ProbePack
        from hatcat.train import DEFAULT_MELDS
        from hatcat.training.states import TokenStateCache, words_windows

        settings = Settings.from_env()
        self.bank = ProbeBank(ProbePack.load(pack))
        self.monitor = Monitor(
            self.bank, load_pack(None, melds=DEFAULT_MELDS), settings.base_layers, settings.keep_top_k
        )
        words = WordsOnly(settings)
        self.windows = lambda t: words_windows(words.model, words.tokenizer, t)
        self.cache = TokenStateCache(settings.cache_dir, self.bank.pack.manifest["model"], self.bank.tap_layer)
        self.names = STAT_NAMES

    def analyze(self, texts: list[str], concepts: list[str] | None) -> list[dict]:
        out = []
        for text in texts:
            act, words, div = self.bank.scores(self.cache.get(text), self.windows(text))
            records = self.monitor.records(act, words, div, [""] * len(act), range(len(act)))
            cols = [self.bank.index[c] for c in concepts or ()]
            stats = [(v.max(0).values, v.mean(0), v[-1]) for v in (act, words, div)]
            rows = [dict(zip(self.names, (float(x[c]) for triple in stats for x in triple))) for c in cols]
            out.append(
                {
                    "concepts": [{"concept": c, **r} for c, r in zip(concepts or (), rows)],
                    "tokens": [{"divergence": {"max_divergence": r.max_divergence}} for r in records],
                }
            )
        return out


def analyze(client, texts: list[str], concepts: list[str] | None = None) -> list[dict]:
    """One analysis per text, in order (lists of up to 64 texts per request, scored in batches)."""
    if isinstance(client, Offline):
        return client.analyze(texts, concepts)
    out = []
    for start in range(0, len(texts), 64):
        body = {"input": texts[start : start + 64], **({"concepts": concepts} if concepts else {"top_k": 1})}
        reply = client.post("/v1/analyze", json=body, timeout=1200)
        reply.raise_for_status()
        out += reply.json()["data"]
    return out


def concept_set(client: httpx.Client, texts_of: dict[str, list[str]], read_out: str) -> dict:
    """AUROC and top-1 of `{read_out}_activation` (and of the words-only `{read_out}_text_similarity`)."""
    concepts = list(texts_of)
    act, words = [], []
    texts = [t for c in concepts for t in texts_of[c]]
    label = [i for i, c in enumerate(concepts) for _ in texts_of[c]]
    for analysis in analyze(client, texts, concepts):
        stats = {s["concept"]: s for s in analysis["concepts"]}
        act.append([stats[k][f"{read_out}_activation"] for k in concepts])
        words.append([stats[k][f"{read_out}_text_similarity"] for k in concepts])
    label, act, words = np.array(label), np.array(act), np.array(words)
    out = {"n_concepts": len(concepts), "n_texts": len(label)}
    for name, s in (("activation", act), ("words_only", words)):
        aurocs = {c: roc_auc_score(label == i, s[:, i]) for i, c in enumerate(concepts)}
        out[name] = {
            "mean_auroc": round(float(np.mean(list(aurocs.values()))), 4),
            "top1": round(float(np.mean(s.argmax(1) == label)), 4),
            "per_concept_auroc": {c: round(float(a), 4) for c, a in aurocs.items()},
        }
    out["activation_minus_words_auroc"] = round(out["activation"]["mean_auroc"] - out["words_only"]["mean_auroc"], 4)
    return out


def divergence_pairs(client: httpx.Client, path: Path) -> dict:
    """AUROC implied vs named of each pair's concept's last and mean divergence (all pairs in one batch)."""
    pairs = yaml.safe_load(path.read_text())["pairs"]
    concepts = sorted({p["concept"] for p in pairs})
    texts = [p[kind] for p in pairs for kind in ("implied", "named")]
    stats = [{s["concept"]: s for s in a["concepts"]} for a in analyze(client, texts, concepts)]
    out = {"n_pairs": len(pairs)}
    for pool in ("last", "mean"):
        implied = [stats[2 * i][p["concept"]][f"{pool}_divergence"] for i, p in enumerate(pairs)]
        named = [stats[2 * i + 1][p["concept"]][f"{pool}_divergence"] for i, p in enumerate(pairs)]
        y = [1] * len(implied) + [0] * len(named)
        out[f"auroc_implied_vs_named_{pool}"] = round(roc_auc_score(y, implied + named), 4)
    return out


def control(client: httpx.Client, pack: Path) -> dict:
    colours = [r["divergence"]["max_divergence"] for a in analyze(client, control_texts("test")) for r in a["tokens"]]
    metrics = json.loads((pack / "metrics.json").read_text())["per_concept"]
    fpr = np.array([m["control_fpr_test"] for m in metrics.values() if "control_fpr_test" in m])  # not an injected row
    return {
        "tokens": len(colours),
        "share_beyond_colour_midpoint": round(float(np.mean(np.abs(colours) >= 0.5)), 4),
        "threshold_fpr_test_mean": round(float(fpr.mean()), 5),
        "threshold_fpr_test_median": round(float(np.median(fpr)), 5),
        "concepts_within_0.01": round(float(np.mean(fpr <= 0.01)), 4),
        "concepts_within_0.02": round(float(np.mean(fpr <= 0.02)), 4),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.signal_eval", description=__doc__.splitlines()[0])
    ap.add_argument("--pack", type=Path, default=PACK)
    ap.add_argument(
        "--read-out",
        choices=("last", "mean"),
        default=None,
        help="response-level statistic (default: the one chosen on dev in results/recipe_compare.json)",
    )
    ap.add_argument(
        "--offline", action="store_true", help="score cached token states with the bank directly (no server)"
    )
    args = ap.parse_args(argv)
    args.read_out = args.read_out or chosen_read_out()
    t0 = time.time()
    wordnet = _yaml(SIGNAL / "wordnet_examples.yaml")
    scenes = {c["id"]: c["scenes"] for c in _yaml(ROOT / "data" / "eval" / "natural_scenes.yaml")["concepts"]}
    if args.offline:
        doc = evaluate(Offline(args.pack), args, wordnet, scenes)
        doc["score"] += (
            " — offline: ProbeBank.scores + Monitor.records on cached token states, as /v1/analyze computes them"
        )
    else:
        proc, base = start_app({"HATCAT_PROBE_PACK": str(args.pack)}, Path("/tmp/hatcat-signal-eval.log"))
        try:
            with httpx.Client(base_url=base) as client:
                doc = evaluate(client, args, wordnet, scenes)
        finally:
            stop_app(proc)
    doc["seconds"] = round(time.time() - t0, 1)
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    README.write_text(render(README.read_text()))
    print("\n".join(" | ".join(row) for row in signal_rows()))
    return 0


def evaluate(client, args, wordnet, scenes) -> dict:
    """The evaluation document (test sets, then dev sets)."""
    r = args.read_out
    return {
        "command": "python -m experiments.signal_eval" + (" --offline" if args.offline else ""),
        "pack": str(args.pack.relative_to(ROOT) if args.pack.is_relative_to(ROOT) else args.pack),
        "read_out": r,
        "score": f"/v1/analyze {r}_activation (words-only: {r}_text_similarity)",
        "test": {
            "wordnet_concepts": concept_set(client, wordnet["concepts"], r),
            "emotion_scenes": concept_set(client, _yaml(SIGNAL / "emotion_scenes.yaml")["concepts"], r),
            "divergence_pairs": divergence_pairs(client, SIGNAL / "divergence_pairs.yaml"),
            "control": control(client, args.pack),
        },
        "dev": {
            "natural_scenes": concept_set(client, scenes, r),
            "natural_scenes_emotions": concept_set(client, {c: scenes[c] for c in EMOTIONS}, r),
            "divergence_pairs": divergence_pairs(client, ROOT / "data" / "eval" / "divergence_pairs.yaml"),
        },
    }


if __name__ == "__main__":
    sys.exit(main())
