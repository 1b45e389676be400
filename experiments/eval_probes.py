"""Held-out quality of a probe pack -> results/eval_probes.json + results/eval_probes.png.

- Per layer and overall: mean precision, recall, F1, AUROC over concepts, for the activation
  probes and the words-only text detectors, from the pack's `metrics.json` (test split: other
  templates and other lemmas than training and calibration; never the same string).
- A reliability diagram: the pack's activation probabilities recomputed on the test prompts
  of a random sample of concepts (rebuilt with `hatcat.training.run.plan` and the same
  settings as the run; activations come from the on-disk cache, so nothing is recomputed
  for prompts the training run already saw), on each concept's balanced test set.
- The 20 concepts with the lowest held-out F1 and why: few test positives, confusable
  siblings (which hard-negative concepts' prompts score above the threshold), misses
  (positives below threshold), or a threshold that does not carry over from val to test.

    python -m experiments.eval_probes [--pack probes/gemma-3-270m/sumo-wordnet-v1+safety-v1] [--sample 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from hatcat.paths import RESULTS, ROOT, SHIPPED_PROBES

PACK = SHIPPED_PROBES
OUT = RESULTS / "eval_probes.json"
KEYS = ("precision", "recall", "f1", "auroc")


def summarise(per_concept: dict[str, dict]) -> dict:
    """Means per layer and overall over concepts with both classes in the test split."""
    by_layer: dict[str, list[dict]] = defaultdict(list)
    for m in per_concept.values():
        if m.get("n_pos") and m.get("n_neg"):
            by_layer[str(m["layer"])].append(m)
    mean = lambda ms, k: round(float(np.nanmean([np.nan if m.get(k) is None else m[k] for m in ms])), 4)
    out = {
        layer: {**{k: mean(ms, k) for k in KEYS}, "n": len(ms)}
        for layer, ms in sorted(by_layer.items(), key=lambda kv: int(kv[0]))
    }
    every = [m for ms in by_layer.values() for m in ms]
    out["all"] = {**{k: mean(every, k) for k in KEYS}, "n": len(every)}
    return out


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict:
    """Reliability table (scikit-learn's calibration curve, uniform bins), ECE and Brier score."""
    edges = np.linspace(0, 1, bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], probs), minlength=bins)  # calibration_curve's binning
    frac, mean_prob = calibration_curve(labels, probs, n_bins=bins)
    filled = np.flatnonzero(counts)
    table = [
        {
            "bin": [round(edges[b], 2), round(edges[b + 1], 2)],
            "n": int(counts[b]),
            "mean_prob": None,
            "frac_positive": None,
        }
        for b in range(bins)
    ]
    for b, f, m in zip(filled, frac, mean_prob):
        table[b] |= {"mean_prob": round(float(m), 4), "frac_positive": round(float(f), 4)}
    ece = float((np.abs(frac - mean_prob) * counts[filled]).sum() / len(probs))
    brier = brier_score_loss(labels, probs)
    return {"bins": table, "ece": round(ece, 4), "brier": round(float(brier), 4), "n": len(probs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", type=Path, default=PACK, help="probe pack folder")
    ap.add_argument(
        "--sample", type=int, default=300, help="random concepts whose test prompts are re-scored for calibration"
    )
    ap.add_argument("--worst", type=int, default=20)
    args = ap.parse_args()
    if not (args.pack / "manifest.json").is_file():
        print(f"error: {args.pack} is not a probe pack (no manifest.json)", file=sys.stderr)
        sys.exit(2)

    import torch

    from hatcat.concepts import load_pack
    from hatcat.config import Settings
    from hatcat.model import load_model
    from hatcat.probes import ProbeBank, ProbePack
    from hatcat.train import DEFAULT_MELDS
    from hatcat.training.activations import ActivationCache, extract
    from hatcat.training.run import TrainSettings, plan

    start = time.perf_counter()
    pack = ProbePack.load(args.pack)
    metrics = pack.metrics
    act, text = metrics["per_concept"], metrics["text"]["per_concept"]
    doc: dict = {
        "pack": str(args.pack.relative_to(ROOT) if args.pack.is_relative_to(ROOT) else args.pack),
        "model": pack.manifest["model"],
        "tap_layer": pack.manifest["tap_layer"],
        "pooling": pack.manifest["pooling"],
        "concepts": len(pack.concepts),
        "activation": summarise(act),
        "text": summarise(text),
        "split": "test prompts: templates and lemmas disjoint from train and val; balanced positives vs hard+easy negatives",
    }

    # --- recompute held-out probabilities for a sample (calibration) + the worst concepts (diagnosis)
    settings = Settings.from_env()
    concept_pack = load_pack(melds=DEFAULT_MELDS)
    scored = [c for c, m in act.items() if m.get("n_pos") and m.get("n_neg")]
    worst = sorted(scored, key=lambda c: (act[c]["f1"], act[c].get("auroc") or 0))[: args.worst]
    rng = np.random.default_rng(0)
    sample = sorted(rng.choice(scored, min(args.sample, len(scored)), replace=False).tolist())
    run = pack.manifest.get("training", {})
    ts = TrainSettings(
        concepts=tuple(sorted(set(sample) | set(worst))),
        n_hard=run.get("n_hard", 8),
        n_easy=run.get("n_easy", 8),
        seed=run.get("seed", 0),
    )
    work = plan(concept_pack, ts)
    texts, rows = work.split("test")
    train_rows = work.split("train")[1]
    loaded = load_model(settings.model_name, settings.device, settings.dtype, settings.cache_dir, settings.hf_offline)
    cache = ActivationCache(settings.cache_dir, loaded.name, pack.manifest["tap_layer"])
    missing = len(cache.missing(texts))
    extract(loaded.model, loaded.tokenizer, texts, [cache])
    bank = ProbeBank(pack)
    cols = torch.tensor([bank.index[c] for c in work.trained])
    x = cache.stack(texts, pack.manifest["pooling"])
    probs = bank.score(x)[:, cols].numpy()  # [texts, trained]
    owner_of = {}
    for p in work.prompts:
        if p.split == "test" and p.positive:
            owner_of.setdefault(p.text, p.concept)

    cal_p, cal_y = [], []
    for j, c in enumerate(work.trained):
        if c not in sample:
            continue
        r, y = rows.labelled(j, balanced=True)
        cal_p.append(probs[r, j])
        cal_y.append(y)
    cal_p, cal_y = np.concatenate(cal_p), np.concatenate(cal_y)
    doc["calibration"] = {"concepts": len(sample), **reliability(cal_p, cal_y)}

    worst_rows = []
    for c in worst:
        j = work.trained.index(c)
        m = act[c]
        r, y = rows.labelled(j, balanced=True)
        t = float(bank.act_threshold[bank.index[c]])
        p = probs[r, j]
        false_pos = Counter(owner_of.get(texts[i], "?") for i, yy, pp in zip(r, y, p) if yy == 0 and pp >= t)
        hard_set = set(work.negatives[c][0])
        confusers = [(k, n) for k, n in false_pos.most_common() if k in hard_set]
        misses = int(((p < t) & (y == 1)).sum())
        reasons = []
        if m["n_pos"] <= 5:
            reasons.append(
                f"few positives ({m['n_pos']} test, {len(train_rows.pos[j])} train): one prompt moves F1 by 0.2"
            )
        own = x[r[y == 1]]
        if len(own):
            every = bank.score(own)  # all concepts on this concept's positive test prompts
            mine = every[:, bank.index[c]]
            sibs = [s for s in concept_pack.siblings(c) if s in bank.index]
            beaten = Counter()
            for s in sibs:
                n = int((every[:, bank.index[s]] > mine).sum())
                if n:
                    beaten[s] = n
            if beaten:
                reasons.append(
                    "confusable siblings outrank it on its own test prompts: "
                    + ", ".join(f"{k} ({n}/{len(own)})" for k, n in beaten.most_common(3))
                )
        if confusers:
            reasons.append("hard negatives above its threshold: " + ", ".join(f"{k} ({n})" for k, n in confusers[:3]))
        easy_fp = sum(n for k, n in false_pos.items() if k not in hard_set)
        if easy_fp:
            reasons.append(f"{easy_fp} distant-concept prompts above threshold")
        if misses:
            reasons.append(
                f"misses {misses}/{int(y.sum())} positives at threshold {t:.2f} (best positive scores {p[y == 1].max():.2f})"
            )
        if (m.get("auroc") or 0) >= 0.9 and m["f1"] < 0.8:
            reasons.append("ranks well (AUROC >= 0.9) but the val threshold does not carry over to test")
        if m.get("source") == "deception_probe":
            reasons = [
                (
                    "the injected deception probe: its metrics come from results/deception.json (held-out facts x unseen "
                    "instruction wordings, pooled as the chosen recipe says, threshold at 5% dev false positives), not from template prompts"
                )
            ]
        if concept_pack[c].has_placeholder_definition:
            reasons.append("placeholder definition in the pack")
        worst_rows.append(
            {
                "concept": c,
                "layer": m["layer"],
                **{k: m.get(k) for k in (*KEYS, "n_pos", "n_neg", "threshold")},
                "text_f1": text.get(c, {}).get("f1"),
                "siblings": len(concept_pack.siblings(c)),
                "why": "; ".join(reasons) or "no single cause found",
            }
        )
    doc["worst"] = worst_rows
    doc["timing"] = {
        "prompts_rescored": len(texts),
        "prompts_computed": missing,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    doc["command"] = "python -m experiments.eval_probes"
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    plot(doc, RESULTS / "eval_probes.png")
    print(
        json.dumps(
            {"activation": doc["activation"], "text": doc["text"]["all"], "ece": doc["calibration"]["ece"]}, indent=1
        )
    )


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.3))
    bins = [x for x in doc["calibration"]["bins"] if x["n"]]
    a.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    a.plot([x["mean_prob"] for x in bins], [x["frac_positive"] for x in bins], marker="o")
    for x in bins:
        a.annotate(
            str(x["n"]), (x["mean_prob"], x["frac_positive"]), fontsize=7, xytext=(3, -9), textcoords="offset points"
        )
    a.set_xlabel("predicted probability (activation probe)")
    a.set_ylabel("fraction positive (held-out test prompts)")
    cal = doc["calibration"]
    a.set_title(f"reliability, {cal['concepts']} concepts: ECE {cal['ece']:.3f}, Brier {cal['brier']:.3f}")
    layers = [k for k in doc["activation"] if k != "all"]
    width = 0.2
    for i, (side, key) in enumerate([("activation", "f1"), ("activation", "auroc"), ("text", "f1"), ("text", "auroc")]):
        b.bar(
            np.arange(len(layers)) + (i - 1.5) * width,
            [doc[side][l][key] for l in layers],
            width,
            label=f"{side} {key}",
        )
    b.set_xticks(range(len(layers)), [f"layer {l}\n(n={doc['activation'][l]['n']})" for l in layers], fontsize=8)
    b.set_ylim(0.5, 1.0)
    b.set_title("held-out F1 / AUROC per concept layer")
    b.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
