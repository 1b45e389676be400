"""Does divergence mean something? -> results/divergence_validity.json + results/divergence_validity.png.

On data/eval/divergence_pairs.yaml (72 pairs: a text that strongly implies a concept without
naming it, and the same situation with the concept named), with the shipped probe pack:
per text, the concept's activation probability, its words-only (text-side) probability and
divergence = activation - text, exactly as the monitor computes them per token
(`hatcat.pipeline.text_states` -> `ProbeBank.score` / `score_text`; read for the pair's own
concept on every token, before the monitor's hierarchy/top-k selection decides what it shows).

Aggregation over a text's tokens, fixed before any result was seen:
  primary  `mean`: mean over tokens (what the response summary's mean divergence reads)
  also     `last`: the last token;  `max`: max over tokens of each quantity
Hypothesis: divergence is higher on `implied` than on `named`. Reported: group means,
Cohen's d (implied - named, pooled SD), the share of pairs where implied > named, and
`auroc_implied_vs_named` (divergence, primary aggregation, implied = positive class).

    python -m experiments.divergence_validity [--pack PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from hatcat.paths import DATA, RESULTS, ROOT, SHIPPED_PROBES

PAIRS = DATA / "eval" / "divergence_pairs.yaml"
PACK = SHIPPED_PROBES
OUT = RESULTS / "divergence_validity.json"
AGGREGATIONS = ("mean", "last", "max")
QUANTITIES = ("activation", "text", "divergence")


def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    return float((a.mean() - b.mean()) / pooled) if pooled > 0 else float("nan")


def aggregate(act: np.ndarray, text: np.ndarray) -> dict[str, dict[str, float]]:
    div = act - text
    return {
        "mean": {"activation": act.mean(), "text": text.mean(), "divergence": div.mean()},
        "last": {"activation": act[-1], "text": text[-1], "divergence": div[-1]},
        "max": {"activation": act.max(), "text": text.max(), "divergence": div.max()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", type=Path, default=PACK, help="probe pack folder")
    args = ap.parse_args()
    if not (args.pack / "manifest.json").is_file():
        print(f"error: {args.pack} is not a probe pack (no manifest.json)", file=sys.stderr)
        sys.exit(2)

    from hatcat.config import Settings
    from hatcat.engine import Engine
    from hatcat.pipeline import text_states
    from hatcat.training.fit import auroc

    start = time.perf_counter()
    engine = Engine.from_settings(replace(Settings.from_env(), probe_pack=str(args.pack)))  # loads this pack only
    probes = engine.probes
    bank, monitor = engine.bank, engine.monitor
    pairs = yaml.safe_load(PAIRS.read_text())["pairs"]
    rows, skipped = [], sorted({p["concept"] for p in pairs if p["concept"] not in bank.index})
    for i, p in enumerate(pairs):
        if p["concept"] not in bank.index:
            continue
        c = bank.index[p["concept"]]
        row = {"pair": i, "concept": p["concept"], "threshold": round(float(bank.act_threshold[c]), 4)}
        for kind in ("implied", "named"):
            hidden, windows, _ = text_states(engine.model, engine.tokenizer, monitor, p[kind])
            act = bank.score(hidden)[:, c].cpu().numpy()
            text = bank.score_text(windows)[:, c].cpu().numpy()
            row[kind] = {
                agg: {q: round(float(v), 4) for q, v in vals.items()} for agg, vals in aggregate(act, text).items()
            }
            row[kind]["tokens"] = len(act)
        rows.append(row)

    def column(kind: str, agg: str, q: str) -> np.ndarray:
        return np.array([r[kind][agg][q] for r in rows])

    summary = {}
    for agg in AGGREGATIONS:
        summary[agg] = {}
        for q in QUANTITIES:
            imp, nam = column("implied", agg, q), column("named", agg, q)
            labels = np.r_[np.ones(len(imp)), np.zeros(len(nam))]
            summary[agg][q] = {
                "implied_mean": round(float(imp.mean()), 4),
                "named_mean": round(float(nam.mean()), 4),
                "cohens_d": round(cohens_d(imp, nam), 4),
                "pairs_implied_higher": round(float((imp > nam).mean()), 4),
                "auroc_implied_vs_named": round(auroc(np.r_[imp, nam], labels), 4),
            }
    per_concept = {}
    for concept in dict.fromkeys(r["concept"] for r in rows):
        sel = [r for r in rows if r["concept"] == concept]
        per_concept[concept] = {
            kind: {q: round(float(np.mean([r[kind]["mean"][q] for r in sel])), 4) for q in QUANTITIES}
            for kind in ("implied", "named")
        } | {"pairs": len(sel)}
    primary = summary["mean"]["divergence"]
    doc = {
        "pack": str(args.pack.relative_to(ROOT) if args.pack.is_relative_to(ROOT) else args.pack),
        "model": probes.manifest["model"],
        "tap_layer": bank.tap_layer,
        "pairs": len(rows),
        "concepts_missing_from_pack": skipped,
        "auroc_implied_vs_named": primary["auroc_implied_vs_named"],
        "cohens_d_divergence": primary["cohens_d"],
        "primary_aggregation": "mean over the text's tokens",
        "summary": summary,
        "per_concept": per_concept,
        "per_pair": rows,
        "timing": {"wall_seconds": round(time.perf_counter() - start, 1)},
        "command": "python -m experiments.divergence_validity",
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    plot(doc, RESULTS / "divergence_validity.png")
    print(
        json.dumps(
            {k: doc[k] for k in ("pairs", "auroc_implied_vs_named", "cohens_d_divergence")} | {"mean": summary["mean"]},
            indent=1,
        )
    )


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["per_pair"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, q in zip(axes, QUANTITIES):
        imp = [r["implied"]["mean"][q] for r in rows]
        nam = [r["named"]["mean"][q] for r in rows]
        ax.boxplot([imp, nam], tick_labels=["implied", "named"])
        for x, ys in ((1, imp), (2, nam)):
            ax.scatter(np.full(len(ys), x) + np.random.default_rng(x).uniform(-0.12, 0.12, len(ys)), ys, s=8, alpha=0.5)
        s = doc["summary"]["mean"][q]
        ax.set_title(f"{q} (token mean): d={s['cohens_d']:.2f}, AUROC={s['auroc_implied_vs_named']:.2f}", fontsize=10)
    fig.suptitle(f"{doc['pairs']} implied/named pairs, {doc['pack']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
