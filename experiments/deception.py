"""Deception probe study -> results/deception.json + results/deception.png (+ the fitted probe).

Trains the honesty/deception probe of `hatcat.training.deception` (instructed pairs over
data/honesty/facts_true_false.csv) at the probe pack's tap layer and, for reference, at
other blocks, then scores it on data it never saw:

  auroc_heldout_facts     held-out facts, training wordings (honest vs lying instruction)
  auroc_unseen_wordings   held-out facts and the 8 unseen wordings
  auroc_roleplay          data/eval/roleplay_deception.yaml (deceptive vs honest answer, same prefix)
  auroc_layer0_control    the same recipe on decoder block 0, scored on the role-play set
  shortcut checks         unseen wordings free of honesty words; true vs false facts under the
                          same honest instruction

The probe is fitted on train facts x train wordings; its Platt scaling and threshold come
from the val facts (train wordings). Nothing is chosen on held-out data: the recipe and the
shipped variant (B) were fixed before the first run, and the layer is the pack's tap layer.

    python -m experiments.deception                       # the study (extraction is cached)
    python -m experiments.deception --inject probes/gemma-3-270m/sumo-wordnet-v1+safety-v1
        # write the fitted probe into a pack as the `Deception` activation row (no model
        # needed: seconds; re-run it after every re-training of the pack)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from hatcat.paths import DATA, RESULTS, SHIPPED_PROBES

OUT = RESULTS / "deception.json"
PROBE_FILE = RESULTS / "deception_probe.safetensors"
ROLEPLAY = DATA / "eval" / "roleplay_deception.yaml"
PACK = SHIPPED_PROBES
SHIPPED = "B"


def default_layer() -> int:
    """The shipped pack's tap layer, else the tap sweep's choice, else 12."""
    manifest = PACK / "manifest.json"
    if manifest.is_file():
        return int(json.loads(manifest.read_text())["tap_layer"])
    sweep = RESULTS / "tap_sweep.json"
    if sweep.is_file():
        chosen = json.loads(sweep.read_text()).get("chosen", {})
        if "tap_layer" in chosen:
            return int(chosen["tap_layer"])
    return 12


def item_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    from hatcat.training.fit import at_threshold, auroc

    point = at_threshold(scores, labels, threshold)
    return {
        **{k: round(point[k], 4) for k in ("precision", "recall", "f1")},
        "auroc": round(auroc(scores, labels), 4),
        "threshold": round(threshold, 4),
        "n_pos": int(labels.sum()),
        "n_neg": int(len(labels) - labels.sum()),
    }


def study(args: argparse.Namespace) -> dict:
    import torch

    from hatcat.config import Settings
    from hatcat.model import load_model
    from hatcat.training import deception as d
    from hatcat.training.fit import auroc

    torch.manual_seed(0)
    settings = Settings.from_env()
    layers = sorted(set(args.layers) | {args.layer, 0})
    start = time.perf_counter()
    loaded = load_model(settings.model_name, settings.device, settings.dtype, settings.cache_dir, settings.hf_offline)
    facts = d.load_facts()
    splits = d.split_facts(facts, seed=0)
    items = d.build_items(facts, splits, seed=0)
    roleplay = yaml.safe_load(ROLEPLAY.read_text())["pairs"]
    items += d.roleplay_items(roleplay)
    caches = {layer: d.TokenStateCache(settings.cache_dir, loaded.name, layer) for layer in layers}
    todo = len({it.key for c in caches.values() for it in c.missing(items)})
    done = [0]

    def progress(n: int) -> None:
        done[0] += n
        rate = done[0] / (time.perf_counter() - t0)
        print(f"  token states: {done[0]}/{todo} texts, {rate:.1f}/s, ETA {(todo - done[0]) / rate:.0f}s", flush=True)

    t0 = time.perf_counter()
    computed = d.fill_cache(loaded.model, loaded.tokenizer, items, list(caches.values()), progress=progress)
    extraction = time.perf_counter() - t0

    group = lambda name: [it for it in items if it.group == name]
    train_b, val_b = group("train"), group("val")
    recipes = {
        "A": ([it for it in train_b if it.truth == 1], [it for it in val_b if it.truth == 1]),
        "B": (train_b, val_b),
    }
    seen, unseen, truefalse, rp = (
        group("heldout_seen"),
        group("heldout_unseen"),
        group("honest_truefalse"),
        group("roleplay"),
    )
    kwfree = [it for it in unseen if d.keyword_free(it.wording)]
    kwful = [it for it in unseen if not d.keyword_free(it.wording)]
    labels = lambda xs: np.array([it.label for it in xs], dtype=float)

    results: dict = {}
    fitted: dict = {}
    for name, (train, val) in recipes.items():
        results[name] = {}
        for layer in layers:
            probe = d.fit_deception(caches[layer], train, val)
            fitted[name, layer] = probe
            score = lambda xs, probe=probe, layer=layer: d.item_scores(probe, caches[layer], xs)[0]
            rp_items, rp_tok, rp_owner = d.item_scores(probe, caches[layer], rp)
            un_items, un_tok, un_owner = d.item_scores(probe, caches[layer], unseen)
            rp_pairs = rp_items.reshape(-1, 2)  # (deceptive, honest) per pair
            results[name][str(layer)] = {
                "auroc_heldout_facts": round(auroc(score(seen), labels(seen)), 4),
                "auroc_unseen_wordings": round(auroc(un_items, labels(unseen)), 4),
                "auroc_unseen_wordings_keyword_free": round(auroc(score(kwfree), labels(kwfree)), 4),
                "auroc_unseen_wordings_with_keywords": round(auroc(score(kwful), labels(kwful)), 4),
                "auroc_unseen_wordings_per_token": round(auroc(un_tok, labels(unseen)[un_owner]), 4),
                "auroc_honest_true_vs_false": round(auroc(score(truefalse), labels(truefalse)), 4),
                "auroc_roleplay": round(auroc(rp_items, labels(rp)), 4),
                "auroc_roleplay_per_token": round(auroc(rp_tok, labels(rp)[rp_owner]), 4),
                "roleplay_pairs_deceptive_higher": round(float((rp_pairs[:, 0] > rp_pairs[:, 1]).mean()), 4),
                "val_threshold": round(float(probe.threshold[0]), 4),
            }
            print(f"recipe {name} layer {layer:2d}: {results[name][str(layer)]}", flush=True)

    tap = str(args.layer)
    shipped = results[SHIPPED][tap]
    probe = fitted[SHIPPED, args.layer]
    threshold = float(probe.threshold[0])
    un_scores = d.item_scores(probe, caches[args.layer], unseen)[0]
    per_wording = {}
    for w in range(d.N_TRAIN_WORDINGS, len(d.WORDINGS)):
        sel = [i for i, it in enumerate(unseen) if it.wording == w]
        per_wording[str(w)] = {
            "honest": d.WORDINGS[w][0],
            "lying": d.WORDINGS[w][1],
            "keyword_free": d.keyword_free(w),
            "auroc": round(auroc(un_scores[sel], labels(unseen)[sel]), 4),
            "n": len(sel),
        }
    rp_scores = d.item_scores(probe, caches[args.layer], rp)[0]
    domains: dict[str, list[int]] = {}
    for i, it in enumerate(rp):
        domains.setdefault(roleplay[i // 2].get("domain", "other"), []).append(i)
    per_domain = {
        k: {"auroc": round(auroc(rp_scores[v], labels(rp)[v]), 4), "pairs": len(v) // 2}
        for k, v in sorted(domains.items())
    }

    control = results[SHIPPED]["0"]["auroc_roleplay"]
    doc = {
        "model": loaded.name,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "tap_layer": args.layer,
        "shipped_recipe": SHIPPED,
        "auroc_heldout_facts": shipped["auroc_heldout_facts"],
        "auroc_unseen_wordings": shipped["auroc_unseen_wordings"],
        "auroc_roleplay": shipped["auroc_roleplay"],
        "auroc_layer0_control": control,
        "auroc_unseen_wordings_keyword_free": shipped["auroc_unseen_wordings_keyword_free"],
        "auroc_honest_true_vs_false": shipped["auroc_honest_true_vs_false"],
        "targets": {
            "auroc_unseen_wordings>=0.90": shipped["auroc_unseen_wordings"] >= 0.90,
            "auroc_roleplay-auroc_layer0_control>=0.15": round(shipped["auroc_roleplay"] - control, 4) >= 0.15,
            "roleplay_minus_control": round(shipped["auroc_roleplay"] - control, 4),
        },
        "pack_metrics": item_metrics(un_scores, labels(unseen), threshold),
        "recipes": {
            "A": "instructed pairs only: a true fact after an honest (0) vs a lying (1) instruction",
            "B": "A plus false facts after a lying instruction (1): instructed lies that succeed",
        },
        "by_recipe_and_layer": results,
        "unseen_wordings": per_wording,
        "roleplay_per_domain": per_domain,
        "method": {
            "features": "decoder block output at each statement/answer token; a text's score is the mean token probability",
            "fit": "per-token LDA (shrinkage 0.2) on train facts x train wordings; Platt scaling on val facts; threshold at 5% of val honest tokens firing",
            "text_layout": "'{instruction}\\nStatement:' + ' {fact}'; role-play: '{context}\\n{question}\\nReply:' + ' {answer}'",
            "splits": {k: len(v) for k, v in splits.items()},
            "items": {g: sum(it.group == g for it in items) for g in dict.fromkeys(it.group for it in items)},
            "train_tokens": int(sum(len(caches[args.layer].rows[it.key]) for it in train_b)),
            "wordings_train": d.N_TRAIN_WORDINGS,
            "wordings_unseen": len(d.WORDINGS) - d.N_TRAIN_WORDINGS,
            "keyword_free_unseen": [w for w in per_wording if per_wording[w]["keyword_free"]],
            "layer0_control": "recipe B fitted on decoder block 0 output (same data, same fit), scored on the role-play set",
        },
        "timing": {
            "texts_computed": computed,
            "extraction_seconds": round(extraction, 1),
            "wall_seconds": round(time.perf_counter() - start, 1),
        },
        "command": "python -m experiments.deception",
    }
    d.save_probe(
        PROBE_FILE,
        {layer: fitted[SHIPPED, layer] for layer in layers},
        {"model": loaded.name, "recipe": SHIPPED, "source": "data/honesty/facts_true_false.csv"},
    )
    plot(doc, rp_scores, labels(rp), RESULTS / "deception.png")
    return doc


def plot(doc: dict, rp_scores: np.ndarray, rp_labels: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    keys = [
        "auroc_heldout_facts",
        "auroc_unseen_wordings",
        "auroc_unseen_wordings_keyword_free",
        "auroc_honest_true_vs_false",
        "auroc_roleplay",
    ]
    for ax, name in zip(axes[:2], ("A", "B")):
        table = doc["by_recipe_and_layer"][name]
        layers = sorted(table, key=int)
        for key in keys:
            ax.plot(
                [int(l) for l in layers], [table[l][key] for l in layers], marker="o", label=key.removeprefix("auroc_")
            )
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.axvline(doc["tap_layer"], color="black", lw=0.8, ls="--")
        ax.set_title(f"recipe {name}" + (" (shipped)" if name == doc["shipped_recipe"] else ""))
        ax.set_xlabel("decoder block")
        ax.set_ylabel("AUROC")
        ax.set_ylim(0.3, 1.02)
    axes[0].legend(fontsize=7, loc="lower right")
    bins = np.linspace(0, 1, 21)
    axes[2].hist(rp_scores[rp_labels == 1], bins, alpha=0.6, label="deceptive answer")
    axes[2].hist(rp_scores[rp_labels == 0], bins, alpha=0.6, label="honest answer")
    axes[2].set_title(
        f"role-play, block {doc['tap_layer']}: AUROC {doc['auroc_roleplay']:.2f} (block 0: {doc['auroc_layer0_control']:.2f})"
    )
    axes[2].set_xlabel("mean token P(deception)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def score_pack_row(folder: Path, manifest: dict, layer: int) -> dict:
    """AUROCs of a pack's current `Deception` activation row on the study's sets (cached token states)."""
    import torch
    from safetensors.torch import load_file

    from hatcat.config import Settings
    from hatcat.training import deception as d
    from hatcat.training.fit import LinearProbes, auroc

    row = manifest["concepts"].index("Deception")
    t = load_file(folder / "activation.safetensors")
    probe = LinearProbes(t["weight"][row : row + 1].float(), t["bias"][row : row + 1].float(), torch.tensor([0.5]))
    cache = d.TokenStateCache(Settings.from_env().cache_dir, manifest["model"], layer)
    facts = d.load_facts()
    items = d.build_items(facts, d.split_facts(facts, seed=0), seed=0) + d.roleplay_items(
        yaml.safe_load(ROLEPLAY.read_text())["pairs"]
    )
    out = {
        "source": f"{folder.name} activation row {row}, as trained by the pack's run",
        "threshold": manifest["thresholds"]["activation"][row],
    }
    for group, key in (
        ("heldout_seen", "auroc_heldout_facts"),
        ("heldout_unseen", "auroc_unseen_wordings"),
        ("honest_truefalse", "auroc_honest_true_vs_false"),
        ("roleplay", "auroc_roleplay"),
    ):
        sel = [it for it in items if it.group == group]
        if any(it.key not in cache.rows for it in sel):
            return {"error": "token states not cached: run `python -m experiments.deception` first"}
        out[key] = round(auroc(d.item_scores(probe, cache, sel)[0], np.array([it.label for it in sel], dtype=float)), 4)
    return out


def inject_into(folder: Path) -> int:
    from hatcat.probes import ProbePack, ProbePackError
    from hatcat.training import deception as d

    if not OUT.is_file() or not PROBE_FILE.is_file():
        print(
            f"error: run `python -m experiments.deception` first ({OUT.name} or {PROBE_FILE.name} is missing)",
            file=sys.stderr,
        )
        return 2
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        layer = int(manifest["tap_layer"])
        probe, meta = d.load_probe(PROBE_FILE, layer)
    except (OSError, KeyError, json.JSONDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    doc = json.loads(OUT.read_text())
    if meta["model"] != manifest["model"]:
        print(
            f"error: the deception probe was fitted on {meta['model']}, the pack is for {manifest['model']}",
            file=sys.stderr,
        )
        return 2
    metrics = doc["by_recipe_and_layer"][doc["shipped_recipe"]][str(layer)]
    if "deception_probe" not in manifest and "Deception" in manifest["concepts"]:
        # the row the pack's own training gave `Deception` (safety-meld examples), on the same sets
        doc["pack_row_before_injection"] = score_pack_row(folder, manifest, layer)
        OUT.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"the pack's own Deception row on the same sets: {doc['pack_row_before_injection']}")
    note = {
        "source": "data/honesty/facts_true_false.csv (MIT, Representation Engineering) + 20 instruction wording pairs",
        "recipe": f"hatcat.training.deception recipe {doc['shipped_recipe']}: {doc['recipes'][doc['shipped_recipe']]}; {doc['method']['fit']}",
        "tap_layer": layer,
        "metrics": {k: v for k, v in metrics.items() if k.startswith("auroc")}
        | {"auroc_layer0_control": doc["auroc_layer0_control"]},
        "command": "python -m experiments.deception && python -m experiments.deception --inject <pack>",
    }
    pack_metrics = (
        doc["pack_metrics"]
        if layer == doc["tap_layer"]
        else {"auroc": metrics["auroc_unseen_wordings"], "threshold": metrics["val_threshold"]}
    )
    pack_metrics = {
        **pack_metrics,
        "evaluated_on": "held-out facts x unseen wordings (mean token probability per statement)",
    }
    try:
        row = d.inject(folder, probe, layer, note, pack_metrics)
        ProbePack.load(folder)  # still a valid pack
    except (ValueError, ProbePackError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote the deception probe (layer {layer}) into {folder} as row {row} (`Deception`)")
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--layer",
        type=int,
        default=None,
        help="tap layer of the shipped probe (default: the shipped pack's, else the tap sweep's, else 12)",
    )
    ap.add_argument(
        "--layers",
        type=int,
        nargs="*",
        default=[0, 3, 6, 9, 12],
        help="other decoder blocks to report (not used for choosing)",
    )
    ap.add_argument(
        "--inject", type=Path, metavar="PACK", help="only write the already fitted probe into this probe pack"
    )
    args = ap.parse_args()
    if args.inject:
        sys.exit(inject_into(args.inject))
    args.layer = default_layer() if args.layer is None else args.layer
    doc = study(args)
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(
        json.dumps(
            {
                k: doc[k]
                for k in (
                    "auroc_heldout_facts",
                    "auroc_unseen_wordings",
                    "auroc_roleplay",
                    "auroc_layer0_control",
                    "targets",
                )
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
