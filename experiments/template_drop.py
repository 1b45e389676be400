"""Held-out template F1 before and after the signal-validity recipe: results/template_drop.json.

python -m experiments.template_drop --old-pack PACK [--pack probes/gemma-3-270m/sumo-wordnet-v1+safety-v1]

Both packs are scored on the same held-out template prompts (the test split of the concepts the
new pack's training sampled for its template metrics, metrics.json), each with its own thresholds:
per concept, AUROC of its own prompts against the other sampled concepts' prompts, and F1 on a
balanced draw of those negatives, at the last token (token states from the cache training filled).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score, roc_auc_score

from hatcat.concepts import load_pack
from hatcat.config import Settings
from hatcat.probes import ProbePack
from hatcat.train import DEFAULT_MELDS
from hatcat.training.run import TrainSettings, pack_directions, plan, template_sample
from hatcat.training.states import TokenStateCache

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "template_drop.json"
PACK = ROOT / "probes" / "gemma-3-270m" / "sumo-wordnet-v1+safety-v1"


def scores(weight: torch.Tensor, bias: torch.Tensor, states: torch.Tensor, threshold: torch.Tensor, owner: np.ndarray):
    """Mean AUROC and F1 over the sampled concepts (columns), own prompts vs the others'."""
    logits = (states @ weight.T + bias).numpy()
    aurocs, f1s = [], []
    for j in range(weight.shape[0]):
        y = owner == j
        neg = np.random.default_rng(j).choice(np.flatnonzero(~y), min(int(y.sum()), int((~y).sum())), replace=False)
        rows = np.concatenate([np.flatnonzero(y), neg])
        aurocs.append(roc_auc_score(y, logits[:, j]))
        f1s.append(f1_score(y[rows], logits[rows, j] >= float(threshold[j])))
    return {"mean_auroc": round(float(np.mean(aurocs)), 4), "mean_f1": round(float(np.mean(f1s)), 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.template_drop", description=__doc__.splitlines()[0])
    ap.add_argument("--old-pack", required=True, type=Path)
    ap.add_argument("--pack", default=PACK, type=Path)
    args = ap.parse_args(argv)
    settings = Settings.from_env()
    new = ProbePack.load(args.pack)
    training = new.manifest["training"]
    pack = load_pack(None, melds=DEFAULT_MELDS)
    work = plan(
        pack,
        TrainSettings(layers=tuple(training["layers"]), concepts=tuple(training["concepts"]), seed=training["seed"]),
    )
    texts, owner_ids = template_sample(work, training["seed"])
    sampled = list(dict.fromkeys(owner_ids))
    owner = np.array([sampled.index(c) for c in owner_ids])
    cache = TokenStateCache(settings.cache_dir, new.manifest["model"], new.manifest["tap_layer"])
    states = torch.stack([cache.get(t)[-1] for t in texts])
    index = {c: i for i, c in enumerate(new.concepts)}
    rows = torch.tensor([index[c] for c in sampled])
    t = new.tensors["activation"]
    threshold = torch.logit(torch.tensor(new.manifest["thresholds"]["activation"])[rows].clamp(1e-6, 1 - 1e-6))
    after = scores(t["weight"][rows].float(), t["bias"][rows].float(), states, threshold, owner)
    old_manifest = json.loads((args.old_pack / "manifest.json").read_text())
    old_index = {c: i for i, c in enumerate(old_manifest["concepts"])}
    old_threshold = torch.tensor([old_manifest["thresholds"]["activation"][old_index[c]] for c in sampled])
    w, b = pack_directions(str(args.old_pack), sampled)
    before = scores(w, b, states, torch.logit(old_threshold.clamp(1e-6, 1 - 1e-6)), owner)
    doc = {
        "command": "python -m experiments.template_drop --old-pack PACK",
        "concepts": len(sampled),
        "prompts": len(texts),
        "before": before,
        "after": after,
        "f1_drop": round(before["mean_f1"] - after["mean_f1"], 4),
        "auroc_drop": round(before["mean_auroc"] - after["mean_auroc"], 4),
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
