"""Choose the probe tap layer and pooling on natural scenes -> results/tap_sweep.json (+ .png).

Probes are trained on template prompts (as the real run does) for the concepts of
`data/eval/natural_scenes.yaml`, at every candidate decoder block and both poolings, plus the
words-only features (mean input embedding) as the floor. They are then scored on the
hand-written scenes, which imply a concept without naming it: for each concept, AUROC of its
probe on its own scenes against the scenes of unrelated concepts. Held-out template AUROC is
reported beside it to show why templates alone cannot choose (everything scores near 1 there).

    python -m experiments.tap_sweep [--layers 3 6 9 12 15 17]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from transformers import PreTrainedTokenizerBase

from experiments.template_probes import fit_probes, metrics
from hatcat.concepts import load_pack
from hatcat.config import Settings
from hatcat.model import load_model
from hatcat.paths import DATA, RESULTS
from hatcat.train import DEFAULT_MELDS
from hatcat.training.activations import pooled_activations
from hatcat.training.fit import auroc
from hatcat.training.prompts import related
from hatcat.training.run import TrainSettings, plan

SCENES = DATA / "eval" / "natural_scenes.yaml"
OUT = RESULTS / "tap_sweep.json"
TOLERANCE = 0.01


def scene_auroc(pack, concepts: list[str], probs: np.ndarray, owner: np.ndarray) -> float:
    """Mean over concepts of AUROC(own scenes vs scenes of unrelated concepts)."""
    scores = []
    for c, cid in enumerate(concepts):
        unrelated = np.array([o not in related(pack, cid) for o in owner])
        keep = (owner == cid) | unrelated
        scores.append(auroc(probs[keep, c], (owner[keep] == cid).astype(float)))
    return float(np.nanmean(scores))


@torch.no_grad()
def text_features(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int = 256
) -> torch.Tensor:
    """Words-only features: the mean input embedding of each text's tokens (no context, no layers)."""
    embed = model.get_input_embeddings()
    device = embed.weight.device
    rows = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(device)
        vectors = embed(batch["input_ids"]).float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        rows.append(((vectors * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu())
    return torch.cat(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 4, 6, 8, 10, 12, 14, 15, 16, 17])
    args = ap.parse_args()
    settings = Settings.from_env()
    pack = load_pack(melds=DEFAULT_MELDS)
    loaded = load_model(settings.model_name, settings.device, settings.dtype, settings.cache_dir, settings.hf_offline)
    scenes = yaml.safe_load(SCENES.read_text())["concepts"]
    concepts = [s["id"] for s in scenes]
    scene_texts = [t for s in scenes for t in s["scenes"]]
    owner = np.array([s["id"] for s in scenes for _ in s["scenes"]])

    work = plan(pack, TrainSettings(concepts=tuple(concepts)))
    concepts = work.trained  # pack order
    start = time.perf_counter()
    texts = list(dict.fromkeys(work.texts))
    states = pooled_activations(loaded.model, loaded.tokenizer, texts, args.layers)  # {layer: {pooling: rows}}
    row_of = {t: i for i, t in enumerate(texts)}
    splits = {s: work.split(s) for s in ("train", "val", "test")}
    scene_states = pooled_activations(loaded.model, loaded.tokenizer, scene_texts, args.layers)

    def evaluate(train_x, val_x, test_x, scene_x) -> dict[str, float]:
        probes = fit_probes(train_x, splits["train"][1], val_x, splits["val"][1])
        held = metrics(probes.probs(test_x), probes.threshold, splits["test"][1])
        return {
            "scene_auroc": round(scene_auroc(pack, concepts, probes.probs(scene_x).numpy(), owner), 4),
            "template_auroc": round(float(np.nanmean([m["auroc"] for m in held])), 4),
            "template_f1": round(float(np.mean([m["f1"] for m in held])), 4),
        }

    rows = []
    for layer in args.layers:
        for pooling in ("last", "mean"):
            x = {s: states[layer][pooling][[row_of[t] for t in splits[s][0]]].float() for s in splits}
            result = evaluate(x["train"], x["val"], x["test"], scene_states[layer][pooling].float())
            rows.append({"features": f"block {layer}", "layer": layer, "pooling": pooling, **result})
            print(rows[-1], flush=True)
    words = {s: text_features(loaded.model, loaded.tokenizer, splits[s][0]) for s in splits}
    scene_words = text_features(loaded.model, loaded.tokenizer, scene_texts)
    rows.append(
        {
            "features": "words only (mean input embedding)",
            "layer": None,
            "pooling": "mean",
            **evaluate(words["train"], words["val"], words["test"], scene_words),
        }
    )
    blocks = [r for r in rows if r["layer"] is not None]
    top = max(r["scene_auroc"] for r in blocks)
    # Parsimony: the shallowest block within TOLERANCE of the best. Extraction stops at the tap,
    # and steering at the tap keeps later blocks to act through.
    best = min(
        (r for r in blocks if r["scene_auroc"] >= top - TOLERANCE), key=lambda r: (r["layer"], -r["scene_auroc"])
    )
    result = {
        "model": loaded.name,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "concepts": len(concepts),
        "scenes": len(scene_texts),
        "prompts": len(work.texts),
        "chosen": {
            "tap_layer": best["layer"],
            "pooling": best["pooling"],
            "scene_auroc": best["scene_auroc"],
            "rule": f"shallowest block within {TOLERANCE} of the best scene AUROC ({top})",
        },
        "rows": rows,
        "seconds": round(time.perf_counter() - start, 1),
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, OUT.with_suffix(".png"))
    print(json.dumps(result["chosen"]))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for pooling, colour in (("last", "tab:blue"), ("mean", "tab:orange")):
        sel = [r for r in rows if r["pooling"] == pooling and r["layer"] is not None]
        ax.plot(
            [r["layer"] for r in sel],
            [r["scene_auroc"] for r in sel],
            "o-",
            color=colour,
            label=f"natural scenes, {pooling}",
        )
        ax.plot(
            [r["layer"] for r in sel],
            [r["template_auroc"] for r in sel],
            ":",
            color=colour,
            label=f"held-out templates, {pooling}",
        )
    words = next(r for r in rows if r["layer"] is None)
    ax.axhline(words["scene_auroc"], color="grey", linestyle="--", label="words only, natural scenes")
    ax.set(xlabel="decoder block (tap layer)", ylabel="mean AUROC", title="Tap layer sweep")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
