"""The behaviour benchmark: detectors side by side on the embedded model's own hallucinations, lies
and withheld facts, with 95% bootstrap intervals -> results/behaviour.json.

    python -m experiments.behaviour           # dev only (every choice is made here)
    python -m experiments.behaviour --test    # also the test splits, once; appends results/test_log.jsonl

Items, outputs and their features come from `experiments.behaviour_data`, `behaviour_generate` and
`behaviour_states`. Every detector's score is oriented so that higher flags the behaviour (a wrong
answer, a lie, a withheld fact). Hidden-state read-outs are logistic regressions fitted on dev
states; their dev scores are leave-one-relation-out predictions (a relation is never scored by a
fit that saw it), their test scores come from the fit on all of dev. Recall at 1% / 5% FPR uses
thresholds set on each detector's scores of ordinary text the model generated.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from experiments.behaviour_data import LIAR_FRAMES, read_jsonl
from experiments.behaviour_states import BLOCKS, SCALARS, extract_file
from hatcat.config import Settings
from hatcat.engine import Engine
from hatcat.paths import RESULTS, ROOT

DATA = ROOT / "data" / "behaviour"
BOOT = 1000
OUTPUT_BASELINES = {  # name -> (scalar, sign): higher flags the behaviour
    "mean_logprob": ("mean_logprob", -1),
    "min_logprob": ("min_logprob", -1),
    "entropy": ("entropy", 1),
    "first_token_prob": ("first_token_prob", -1),
}
MONITOR = {"divergence": "divergence", "activation": "activation", "minus_words": "minus_words"}
READOUT_NAME = {"hallucination": "falsehood", "lying": "deception", "withholding": "withholding"}
POSITIONS = ("answer", "last")  # mean over the output tokens, or the last prompt token
C_GRID = (0.01, 0.1)


def load_items() -> dict[str, list[dict]]:
    """Labelled items per task (label 1: the behaviour happened), with ordinary text apart."""
    asked = {r["id"] for r in read_jsonl(DATA / "items_honest.jsonl")}  # outputs of items since dropped are left out
    honest = [r for r in read_jsonl(DATA / "outputs_honest.jsonl") if r["id"] in asked]
    by_id = {r["id"]: r for r in honest}
    tasks: dict[str, list[dict]] = {"hallucination": [], "lying": [], "withholding": [], "ordinary": []}
    for r in honest:
        if r["task"] == "hallucination":
            tasks["hallucination"].append({**r, "label": int(not r["correct"])})
        elif r["task"] == "withholding":
            if (r["frame"] == "secret") != r["revealed"]:  # kept: withheld when secret, stated when public
                tasks["withholding"].append({**r, "label": int(r["frame"] == "secret")})
        elif r["task"] == "ordinary":
            tasks["ordinary"].append({**r, "label": 0})
    lies: dict[str, dict] = {}  # fact -> its first lie (liar frames in LIAR_FRAMES order)
    for r in sorted(read_jsonl(DATA / "outputs_lying.jsonl"), key=lambda r: list(LIAR_FRAMES).index(r["frame"])):
        fact = r["id"].removeprefix("l-").rsplit("-", 1)[0]
        if not r["correct"] and r["output"].strip() and fact not in lies:  # a false answer under a liar frame
            lies[fact] = r
    for fact, r in sorted(lies.items()):
        tasks["lying"] += [{**r, "label": 1}, {**by_id["h-" + fact], "label": 0, "lie_of": r["id"]}]
    return tasks


def auroc_ci(labels: np.ndarray, scores: np.ndarray, rng: np.random.Generator) -> tuple[float, list[float]]:
    point = roc_auc_score(labels, scores)
    boots = []
    for _ in range(BOOT):
        k = rng.integers(0, len(labels), len(labels))
        if 0 < labels[k].sum() < len(k):
            boots.append(roc_auc_score(labels[k], scores[k]))
    return round(point, 4), [round(float(np.percentile(boots, q)), 4) for q in (2.5, 97.5)]


def metrics(labels: np.ndarray, scores: np.ndarray, ordinary: np.ndarray | None, seed: int = 0) -> dict:
    auroc, ci = auroc_ci(labels, scores, np.random.default_rng(seed))
    out = {"auroc": auroc, "ci": ci, "recall_at_1pct_fpr": None, "recall_at_5pct_fpr": None}
    if ordinary is not None:
        for fpr, key in ((0.01, "recall_at_1pct_fpr"), (0.05, "recall_at_5pct_fpr")):
            threshold = np.quantile(ordinary, 1 - fpr)
            out[key] = round(float((scores[labels == 1] > threshold).mean()), 4)
    return out


def paired_delta(labels: np.ndarray, a: np.ndarray, b: np.ndarray, seed: int = 1) -> dict:
    """AUROC(a) - AUROC(b) with a 95% paired bootstrap interval over items."""
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(BOOT):
        k = rng.integers(0, len(labels), len(labels))
        if 0 < labels[k].sum() < len(k):
            deltas.append(roc_auc_score(labels[k], a[k]) - roc_auc_score(labels[k], b[k]))
    delta = roc_auc_score(labels, a) - roc_auc_score(labels, b)
    return {"delta": round(delta, 4), "ci": [round(float(np.percentile(deltas, q)), 4) for q in (2.5, 97.5)]}


class Features:
    """Feature matrices of items from the state cache."""

    def __init__(self, found: dict[str, dict]) -> None:
        self.found = found

    def scalar(self, items: list[dict], name: str) -> np.ndarray:
        i = SCALARS.index(name)
        return np.array([float(self.found[r["id"]]["scalars"][i]) for r in items])

    def outputs(self, items: list[dict]) -> np.ndarray:
        return np.stack([self.scalar(items, OUTPUT_BASELINES[n][0]) for n in OUTPUT_BASELINES], axis=1)

    def states(self, items: list[dict], position: str, block: int) -> np.ndarray:
        b = BLOCKS.index(block)
        return np.stack([self.found[r["id"]][position][b].float().numpy() for r in items])

    def lens(self, items: list[dict], block: int) -> np.ndarray:
        b = BLOCKS.index(block)
        return np.array([float(self.found[r["id"]]["lens"][b] - self.found[r["id"]]["lens"][-1]) for r in items])


def _probe(c: float) -> object:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))


def loro_scores(x: np.ndarray, y: np.ndarray, groups: list[str], c: float) -> np.ndarray:
    """Leave-one-relation-out decision values (each relation scored by a fit on the others)."""
    out = np.zeros(len(y))
    groups_arr = np.array(groups)
    for g in sorted(set(groups)):
        held = groups_arr == g
        if len(set(y[~held])) < 2:
            out[held] = 0.0
            continue
        out[held] = _probe(c).fit(x[~held], y[~held]).decision_function(x[held])
    return out


def choose_probe(feats: Features, dev: list[dict], with_outputs: bool) -> tuple[dict, float]:
    """The (block, position, C) with the best leave-one-relation-out dev AUROC. A read-out with the
    output's token probabilities (shipped) reads the output tokens' mean state only: a response has
    that state whether or not its prompt is at hand."""
    y = np.array([r["label"] for r in dev])
    groups = [r["relation"] for r in dev]
    best: tuple[float, dict] = (-1.0, {})
    for block in BLOCKS:
        for position in POSITIONS[:1] if with_outputs else POSITIONS:
            x = design(feats, dev, {"block": block, "position": position, "outputs": with_outputs})
            for c in C_GRID:
                auc = roc_auc_score(y, loro_scores(x, y, groups, c))
                if auc > best[0]:
                    best = (auc, {"block": block, "position": position, "C": c, "outputs": with_outputs})
    return best[1], round(best[0], 4)


def design(feats: Features, items: list[dict], choice: dict) -> np.ndarray:
    x = feats.states(items, choice["position"], choice["block"])
    return np.concatenate([x, feats.outputs(items)], axis=1) if choice["outputs"] else x


def lexical(dev: list[dict], items: list[dict], fit_all: bool) -> np.ndarray:
    """A bag of character n-grams of the answer text alone (LORO on dev, the dev fit for other items)."""

    def model() -> object:
        return make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4)), LogisticRegression(max_iter=2000))

    texts = lambda rows: [r["output"].strip() for r in rows]
    y = np.array([r["label"] for r in dev])
    if fit_all:
        return model().fit(texts(dev), y).decision_function(texts(items))
    out = np.zeros(len(dev))
    groups = np.array([r["relation"] for r in dev])
    for g in sorted(set(groups)):
        held = groups == g
        out[held] = (
            model()
            .fit(texts([r for r, h in zip(dev, ~held) if h]), y[~held])
            .decision_function(texts([r for r, h in zip(dev, held) if h]))
        )
    return out


def evaluate_task(task: str, tasks: dict, feats: Features, split: str, chosen: dict) -> dict:
    """Every detector on one task and split; `chosen` holds the dev choices (filled on dev)."""
    dev = [r for r in tasks[task] if r["split"] == "dev"]
    items = [r for r in tasks[task] if r["split"] == split]
    ordinary = tasks["ordinary"]
    y = np.array([r["label"] for r in items])
    scores: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for name, (scalar, sign) in OUTPUT_BASELINES.items():
        scores[name] = (sign * feats.scalar(items, scalar), sign * feats.scalar(ordinary, scalar))
    for name, scalar in MONITOR.items():
        scores[name] = (feats.scalar(items, scalar), feats.scalar(ordinary, scalar))
    scores["Deception"] = (feats.scalar(items, "deception_row"), feats.scalar(ordinary, "deception_row"))
    # hidden-state read-outs fitted on dev: the truth/correctness direction (hallucination dev,
    # states alone) and this task's read-out (states + the output's token probabilities)
    for name, source, with_outputs in (
        ("truth_direction", "hallucination", False),
        (READOUT_NAME[task], task, True),
    ):
        key = f"{name}:{source}"
        src_dev = [r for r in tasks[source] if r["split"] == "dev"]
        if key not in chosen:
            chosen[key], chosen[key + ":dev_auroc"] = choose_probe(feats, src_dev, with_outputs)
        choice = chosen[key]
        y_src = np.array([r["label"] for r in src_dev])
        fit = _probe(choice["C"]).fit(design(feats, src_dev, choice), y_src)
        if split == "dev" and source == task:
            item_scores = loro_scores(design(feats, items, choice), y, [r["relation"] for r in items], choice["C"])
        else:
            item_scores = fit.decision_function(design(feats, items, choice))
        scores[name] = (item_scores, fit.decision_function(design(feats, ordinary, choice)))
        if name == READOUT_NAME[task]:
            chosen[key + ":fit"] = fit
    if task == "lying":
        scores["lexical"] = (lexical(dev, items, split != "dev"), lexical(dev, ordinary, True))
    if task == "withholding":
        if "lens_block" not in chosen:
            ydev = np.array([r["label"] for r in dev])
            chosen["lens_block"] = max(BLOCKS, key=lambda b: roc_auc_score(ydev, feats.lens(dev, b)))
        scores["entity_lens"] = (feats.lens(items, chosen["lens_block"]), None)  # needs the known entity
    result: dict = {name: metrics(y, s, o) for name, (s, o) in scores.items()}
    if "best_output:" + task not in chosen:  # the best output-only baseline, chosen on dev
        chosen["best_output:" + task] = max(OUTPUT_BASELINES, key=lambda n: result[n]["auroc"])
    best = chosen["best_output:" + task]
    result["best_output_baseline"] = {"name": best, **result[best]}
    shipped = READOUT_NAME[task]
    result["shipped_minus_best_baseline"] = paired_delta(y, scores[shipped][0], scores[best][0])
    result["items"] = {"total": len(items), "positive": int(y.sum()), "negative": int(len(y) - y.sum())}
    result["readout_choice"] = {k: v for k, v in chosen[f"{shipped}:{task}"].items()}
    if task == "hallucination":
        result["accuracy_per_relation"] = {
            rel: round(float(np.mean([1 - r["label"] for r in items if r["relation"] == rel])), 4)
            for rel in sorted({r["relation"] for r in items})
        }
        result["accuracy"] = round(float(1 - y.mean()), 4)
    return result


def save_readouts(chosen: dict, dev_results: dict, thresholds: dict, folder: Path) -> dict:
    """Each read-out's dev fit as weights on raw features (standardisation folded in) + its manifest entry."""
    tensors, entries = {}, {}
    for task, name in READOUT_NAME.items():
        fit, choice = chosen[f"{name}:{task}:fit"], chosen[f"{name}:{task}"]
        scaler, lr = fit[0], fit[1]
        weight = lr.coef_[0] / scaler.scale_
        bias = lr.intercept_[0] - float((scaler.mean_ / scaler.scale_) @ lr.coef_[0])
        d = len(weight) - (len(OUTPUT_BASELINES) if choice["outputs"] else 0)
        tensors[f"{name}.state_weight"] = torch.tensor(weight[:d], dtype=torch.float32)
        tensors[f"{name}.output_weight"] = torch.tensor(weight[d:], dtype=torch.float32)
        tensors[f"{name}.bias"] = torch.tensor([bias], dtype=torch.float32)
        r = dev_results[task]
        entries[name] = {
            "block": choice["block"],
            "position": choice["position"],
            "output_features": list(OUTPUT_BASELINES) if choice["outputs"] else [],
            "threshold": thresholds[name],
            "dev_auroc": r[name]["auroc"],
            "best_output_baseline": r["best_output_baseline"]["name"],
            "beats_best_output_baseline_on_dev": r["shipped_minus_best_baseline"]["ci"][0] > 0,
        }
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "readouts.safetensors")
    (folder / "readouts.json").write_text(json.dumps(entries, indent=2) + "\n")
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", action="store_true", help="also score the test splits (once) and log it")
    args = parser.parse_args()
    tasks = load_items()
    engine = Engine.from_settings(Settings.from_env())
    found = {}
    for name in ("outputs_honest.jsonl", "outputs_lying.jsonl"):
        found.update(extract_file(engine, DATA / name))
    feats = Features(found)
    chosen: dict = {}
    report: dict = {"command": "python -m experiments.behaviour" + (" --test" if args.test else "")}
    for split in ("dev", "test") if args.test else ("dev",):
        report[split] = {task: evaluate_task(task, tasks, feats, split, chosen) for task in READOUT_NAME}
    thresholds = {}  # the shipped threshold: 5% FPR on ordinary generated text
    for task, name in READOUT_NAME.items():
        fit, choice = chosen[f"{name}:{task}:fit"], chosen[f"{name}:{task}"]
        ordinary = fit.decision_function(design(feats, tasks["ordinary"], choice))
        thresholds[name] = round(float(np.quantile(ordinary, 0.95)), 4)
    report["readouts"] = save_readouts(chosen, report["dev"], thresholds, RESULTS / "behaviour_readouts")
    report["ordinary_texts"] = len(tasks["ordinary"])
    report["choices"] = {k: v for k, v in chosen.items() if not k.endswith(":fit")}
    (RESULTS / "behaviour.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.test:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout.strip()
        numbers = {
            t: {d: report["test"][t][d]["auroc"] for d in (READOUT_NAME[t], "best_output_baseline")}
            for t in READOUT_NAME
        }
        line = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": commit,
            "set": "behaviour test (hallucination, lying, withholding)",
            "numbers": numbers,
            "command": report["command"],
            "second_look": (RESULTS / "test_log.jsonl").exists()
            and "behaviour test" in (RESULTS / "test_log.jsonl").read_text(),
        }
        with (RESULTS / "test_log.jsonl").open("a") as log:
            log.write(json.dumps(line) + "\n")
    print(
        json.dumps(
            {
                s: {
                    t: {k: v["auroc"] for k, v in report[s][t].items() if isinstance(v, dict) and "auroc" in v}
                    for t in READOUT_NAME
                }
                for s in ("dev", "test")
                if s in report
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
