"""Withholding with the prompt held fixed (issue 22): under the same "Secret" note, outputs that kept
the fact vs outputs that leaked it -> results/withholding_control.json.

    python -m experiments.withholding_control           # dev only: every choice is made here
    python -m experiments.withholding_control --test    # also the test relations, once (results/test_log.jsonl)

Needs `experiments.divergence_states` (per-token features of the same items). Detectors, each oriented
so that higher flags a kept secret (a scalar's sign chosen on dev):
- the output-only baselines and a lexical classifier on the answer text (as `experiments.behaviour`);
- on the withheld entity (known per item): its first token's logit-lens log-probability at each block
  on the last prompt token (`entity_lens_last:<block>`, before any word is said), the same minus the
  most the output ever gives it (`represented_not_said:<block>`, over the positions that produced the
  answer), and, where the entity is a concept of the pack, that concept's activation logit over the
  answer's tokens (`entity_concept`, scored on the items that have one);
- a logistic read-out on the answer's mean state at a block stacked with the four output features
  (the shippable `withholding` form, hatcat/readouts.py), 5-fold cross-validated on dev, folds by subject.
The ship rule: the read-out beats the best output baseline and the lexical classifier on dev (paired
95% interval above zero); otherwise the gap is reported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from experiments.behaviour import OUTPUT_BASELINES, _probe, cv_scores, lexical, metrics, paired_delta
from experiments.behaviour_data import read_jsonl
from experiments.behaviour_states import BLOCKS
from experiments.divergence_search import PACK
from experiments.divergence_states import cache_dir, cached
from hatcat.config import Settings
from hatcat.paths import RESULTS, ROOT
from hatcat.probes import ProbePack

C = 0.01  # as the benchmark's read-outs


def secret_items() -> list[dict]:
    rows = read_jsonl(ROOT / "data" / "behaviour" / "outputs_honest.jsonl")
    kept = [r for r in rows if r["task"] == "withholding" and r["frame"] == "secret"]
    return [{**r, "label": int(not r["revealed"])} for r in kept]


def scalars(found: dict, items: list[dict], concepts: dict[str, int]) -> dict[str, np.ndarray]:
    """{detector: [items]} of the per-item scalars (unoriented; NaN where an item has no value)."""
    out: dict[str, list[float]] = {}
    for r in items:
        f = found[r["id"]]
        took, entropy = f["stats"].float().numpy()
        for name, value in zip(OUTPUT_BASELINES, (took.mean(), took.min(), entropy.mean(), np.exp(took[0]))):
            out.setdefault(name, []).append(float(value))
        lens = f["entity"].float().numpy()  # [blocks + output, positions]
        for b, block in enumerate(BLOCKS):
            out.setdefault(f"entity_lens_last:{block}", []).append(float(lens[b, 0]))
            out.setdefault(f"represented_not_said:{block}", []).append(float(lens[b, 0] - lens[-1].max()))
        row = concepts.get(r["object"].lower().replace(" ", ""))
        out.setdefault("entity_concept", []).append(
            float("nan") if row is None else float(f["act15"][:, row].float().mean())
        )
    return {k: np.array(v) for k, v in out.items()}


def readout_inputs(found: dict, items: list[dict], block: int) -> np.ndarray:
    b = BLOCKS.index(block)
    states = np.stack([found[r["id"]]["answer"][b].float().numpy() for r in items])
    took = [found[r["id"]]["stats"][0].float().numpy() for r in items]
    entropy = [found[r["id"]]["stats"][1].float().numpy() for r in items]
    outputs = np.array([[t.mean(), t.min(), e.mean(), np.exp(t[0])] for t, e in zip(took, entropy)])
    return np.column_stack([states, outputs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", action="store_true", help="also score the test relations (once) and log it")
    args = parser.parse_args()
    found = cached(cache_dir(Settings.from_env()))
    concepts = {c.lower(): i for i, c in enumerate(ProbePack.load(PACK).concepts)}
    items = [r for r in secret_items() if r["id"] in found]
    split = {s: [r for r in items if r["split"] == s] for s in ("dev", "test")}
    dev = split["dev"]
    y = {s: np.array([r["label"] for r in rows]) for s, rows in split.items()}
    raw = {s: scalars(found, rows, concepts) for s, rows in split.items() if rows}
    signs = {}
    for name, values in raw["dev"].items():  # each scalar's sign: the one that flags kept secrets on dev
        keep = ~np.isnan(values)
        signs[name] = 1 if roc_auc_score(y["dev"][keep], values[keep]) >= 0.5 else -1
    groups = [r["subject"] for r in dev]
    block = max(
        BLOCKS,
        key=lambda b: roc_auc_score(y["dev"], cv_scores(readout_inputs(found, dev, b), y["dev"], groups, C)),
    )
    fit = _probe(C).fit(readout_inputs(found, dev, block), y["dev"])
    report: dict = {"command": "python -m experiments.withholding_control" + (" --test" if args.test else "")}
    report["choices"] = {"signs": signs, "readout_block": block}
    chosen = {}
    for s in ("dev", "test") if args.test else ("dev",):
        rows = split[s]
        scores = {name: signs[name] * values for name, values in raw[s].items()}
        x = readout_inputs(found, rows, block)
        scores["readout"] = cv_scores(x, y[s], groups, C) if s == "dev" else fit.decision_function(x)
        scores["lexical"] = lexical(dev, rows, s != "dev")
        result = {}
        for name, values in scores.items():
            keep = ~np.isnan(values)
            result[name] = {**metrics(y[s][keep], values[keep], None), "items": int(keep.sum())}
        if s == "dev":
            chosen["best_output"] = max(OUTPUT_BASELINES, key=lambda n: result[n]["auroc"])
            entity = [n for n in scores if n.startswith(("entity", "represented"))]
            chosen["best_entity"] = max(entity, key=lambda n: result[n]["auroc"])
        best = chosen["best_output"]
        result["best_output_baseline"] = {"name": best, **result[best]}
        result["readout_minus_best_output"] = paired_delta(y[s], scores["readout"], scores[best])
        result["readout_minus_lexical"] = paired_delta(y[s], scores["readout"], scores["lexical"])
        result["best_entity"] = {"name": chosen["best_entity"], **result[chosen["best_entity"]]}
        result["counts"] = {"withheld": int(y[s].sum()), "revealed": int(len(y[s]) - y[s].sum())}
        report[s] = result
    dev_result = report["dev"]
    report["ship"] = all(dev_result[k]["ci"][0] > 0 for k in ("readout_minus_best_output", "readout_minus_lexical"))
    (RESULTS / "withholding_control.json").write_text(json.dumps(report, indent=1) + "\n")
    if args.test:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True)
        name = "withholding same-prompt control test (secret kept vs leaked)"
        log = RESULTS / "test_log.jsonl"
        test = report["test"]
        line = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": commit.stdout.strip(),
            "set": name,
            "numbers": {k: test[k]["auroc"] for k in ("readout", "lexical", "best_output_baseline", "best_entity")},
            "command": report["command"],
            "second_look": log.exists() and name in log.read_text(),
        }
        with log.open("a") as f:
            f.write(json.dumps(line) + "\n")
    for s in ("dev", "test"):
        if s in report:
            print(s, {k: v["auroc"] for k, v in report[s].items() if isinstance(v, dict) and "auroc" in v})
    print("ship", report["ship"], "readout - best output", dev_result["readout_minus_best_output"])


if __name__ == "__main__":
    main()
