"""A fair dev search for the `falsehood` read-out -> results/falsehood_search.json (dev only).

    nice -n 10 python -m experiments.falsehood_search            # dev only
    nice -n 10 python -m experiments.falsehood_search --test     # + the winner on the test split, logged

On the hallucination DEV items (the model's own answers, `experiments.behaviour`), from the cached
features (`experiments.behaviour_states`): which state, block(s) and regularisation make the read-out
(a logistic direction on states, stacked with the four output features, as shipped) flag wrong answers
best? Every candidate is scored two ways, both cross-validated on dev only:

- `subject`: 5 folds grouped by subject (as `experiments.behaviour` does);
- `relation`: leave one dev relation out (the test takes other relations: this asks the same question
  on dev, so it ranks the candidates).

Candidates: the state position (`answer`: mean over the states that produced the answer; `last`:
the last prompt token, the state before answering; `both`), the block (6, 9, 12, 15, or several
concatenated), the direction's C, and training-data mixing: openly licensed true/false statements
by others (`MIX`: Geometry of Truth cities and negated cities, kinds that no evaluation set holds)
joined to every fold's fit of the direction. The output-only stack (no state) is the reference: a state earns
its place only by adding to it. The winner (best `relation` AUROC) is compared with the best single
output baseline on dev (paired bootstrap over items); it is shipped (`experiments.behaviour --install`)
only where that margin's 95% interval, under `relation`, lies above zero: the `subject` folds share
relations and overstated the read-out shipped before (dev +0.017, test -0.018).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, LeaveOneGroupOut
from threadpoolctl import threadpool_limits

from experiments.behaviour import OUTPUT_BASELINES, Features, _probe, auroc_ci, load_items, metrics, paired_delta
from experiments.behaviour_states import BLOCKS, cache_dir, cached
from experiments.falsehood_statements import read_set
from hatcat.config import Settings
from hatcat.engine import Engine
from hatcat.paths import RESULTS, ROOT
from hatcat.tap import hidden_at

OUT = RESULTS / "falsehood_search.json"
COMMAND = "python -m experiments.falsehood_search"
BLOCK_SETS = ((6,), (9,), (12,), (15,), (6, 9, 12, 15))
POSITIONS = {"last": ("last",), "answer": ("answer",), "both": ("answer", "last")}
CS = (0.01, 0.03, 0.1)
MIX = {name: ROOT / "data" / "truth" / f"{name}.csv" for name in ("cities", "neg_cities")}  # training only
MIX_BLOCKS = ((9,), (15,), (6, 9, 12, 15))
MIX_CS = (0.01, 0.03)
MIX_WEIGHTS = (0.25, 1.0)


def folds(scheme: str, items: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
    x = np.zeros(len(items))
    if scheme == "subject":
        return list(GroupKFold(5).split(x, groups=[r["subject"] for r in items]))
    return list(LeaveOneGroupOut().split(x, groups=[r["relation"] for r in items]))


Extra = tuple[np.ndarray, np.ndarray, float] | None  # statements mixed into a direction's fit: (x, y, weight)


def oof(x: np.ndarray, y: np.ndarray, splits: list, c: float, extra: Extra = None) -> np.ndarray:
    """Out-of-fold decision values; `extra` statements join every fold's fit, weighted so that they
    count `weight` times the fold's own items in all."""
    out = np.zeros(len(y))
    for fit_on, held in splits:
        xs, ys, w = x[fit_on], y[fit_on], np.ones(len(fit_on))
        if extra is not None:
            ex, ey, weight = extra
            xs, ys = np.concatenate([xs, ex]), np.concatenate([ys, ey])
            w = np.concatenate([w, np.full(len(ey), weight * len(fit_on) / len(ey))])
        fit = _probe(c).fit(xs, ys, logisticregression__sample_weight=w)
        out[held] = fit.decision_function(x[held])
    return out


def stacked(
    outputs: np.ndarray, state: np.ndarray | None, y: np.ndarray, splits: list, c: float, extra: Extra = None
) -> np.ndarray:
    """Cross-validated read-out scores, as `experiments.behaviour.Readout`: the direction's
    out-of-fold scores stacked with the output features, the stack cross-validated on the same folds."""
    z = outputs if state is None else np.column_stack([outputs, oof(state, y, splits, c, extra)])
    return oof(z, y, splits, 1.0)


def state_matrix(feats: Features, items: list[dict], position: str, blocks: tuple[int, ...]) -> np.ndarray:
    """[items, d x positions x blocks]: the states of `position` (POSITIONS) at `blocks`, concatenated."""
    return np.concatenate([feats.states(items, p, b) for p in POSITIONS[position] for b in blocks], axis=1)


def at_blocks(statements: np.ndarray, blocks: tuple[int, ...]) -> np.ndarray:
    """[n, d x blocks]: the statements' states ([n, BLOCKS, d]) at `blocks`, concatenated."""
    return statements[:, [BLOCKS.index(b) for b in blocks]].reshape(len(statements), -1)


@torch.inference_mode()
def statement_states(settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """The MIX statements' states [n, blocks, d] (each text read as /v1/analyze reads it: the mean over
    the states that produced its tokens after the first) and labels (1 = false); cached."""
    path = cache_dir(settings) / "statements" / "cities.pt"
    if not path.exists():
        engine = Engine.from_settings(settings)
        texts, labels = zip(*[(t, l) for name in MIX for t, l in zip(*read_set(MIX[name]), strict=True)])
        found = []
        for start in range(0, len(texts), 64):
            enc = engine.tokenizer(
                list(texts[start : start + 64]), return_tensors="pt", padding=True, padding_side="right"
            )
            hidden = hidden_at(engine.model, dict(enc), list(BLOCKS))
            produced = enc.attention_mask.clone()
            produced[torch.arange(len(produced)), enc.attention_mask.sum(1) - 1] = 0  # not the last token's state
            states = torch.stack([hidden[b].float() for b in BLOCKS], 1) * produced[:, None, :, None]
            found.append(states.sum(2) / produced.sum(1)[:, None, None])
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"states": torch.cat(found).half(), "labels": torch.tensor(labels)}, path)
    saved = torch.load(path)
    return saved["states"].float().numpy(), saved["labels"].numpy()


def candidates() -> list[tuple[str, tuple[int, ...], float, float]]:
    """(position, blocks, C, statement mix weight) to try: the grid, then the mixes (answer states only:
    a given statement has no state before it but its first token's)."""
    grid = [(p, b, c, 0.0) for p in POSITIONS for b in BLOCK_SETS for c in CS]
    return grid + [("answer", b, c, w) for b in MIX_BLOCKS for c in MIX_CS for w in MIX_WEIGHTS]


def name_of(position: str, blocks: tuple[int, ...], c: float, mix: float) -> str:
    return f"{position}@{'+'.join(map(str, blocks))}/C={c}" + (f"/mix={mix}" if mix else "")


def main(test: bool) -> None:
    settings = Settings.from_env()
    tasks = load_items()
    feats = Features(cached(cache_dir(settings)))
    dev = [r for r in tasks["hallucination"] if r["split"] == "dev" and r["id"] in feats.found]
    y = np.array([r["label"] for r in dev])
    outputs = feats.outputs(dev)
    best_name = max(
        OUTPUT_BASELINES,
        key=lambda n: roc_auc_score(y, OUTPUT_BASELINES[n][1] * feats.scalar(dev, OUTPUT_BASELINES[n][0])),
    )
    best_scores = OUTPUT_BASELINES[best_name][1] * feats.scalar(dev, OUTPUT_BASELINES[best_name][0])
    done = {r["name"]: r for r in json.loads(OUT.read_text())["candidates"]} if OUT.exists() else {}
    report: dict = {
        "command": COMMAND,
        "items": {"dev": len(dev), "wrong": int(y.sum())},
        "statements_mixed": {name: str(path.relative_to(ROOT)) for name, path in MIX.items()},
        "best_output_baseline": {"name": best_name, "auroc": round(roc_auc_score(y, best_scores), 4)},
        "candidates": [],
    }
    schemes = {s: folds(s, dev) for s in ("subject", "relation")}
    reference = {s: stacked(outputs, None, y, sp, 1.0) for s, sp in schemes.items()}
    report["outputs_only_stack"] = {s: round(roc_auc_score(y, v), 4) for s, v in reference.items()}
    statements, false = statement_states(settings)
    scores: dict[str, dict[str, np.ndarray]] = {}

    def score(position: str, blocks: tuple[int, ...], c: float, mix: float) -> dict[str, np.ndarray]:
        state = state_matrix(feats, dev, position, blocks)
        extra = (at_blocks(statements, blocks), false, mix) if mix else None
        return {s: stacked(outputs, state, y, sp, c, extra) for s, sp in schemes.items()}

    for position, blocks, c, mix in candidates():
        name = name_of(position, blocks, c, mix)
        if name in done:  # resumable: scores are recomputed only for the winner
            report["candidates"].append(done[name])
            continue
        scores[name] = score(position, blocks, c, mix)
        row = {"name": name, "position": position, "blocks": list(blocks), "C": c, "mix": mix}
        row |= {s: round(roc_auc_score(y, v), 4) for s, v in scores[name].items()}
        report["candidates"].append(row)
        print(json.dumps(row), flush=True)
        OUT.write_text(json.dumps(report, indent=1) + "\n")
    winner = max(report["candidates"], key=lambda r: r["relation"])
    if winner["name"] not in scores:
        scores[winner["name"]] = score(winner["position"], tuple(winner["blocks"]), winner["C"], winner.get("mix", 0))
    found = scores[winner["name"]]
    report["winner"] = {
        **winner,
        "relation_ci": auroc_ci(y, found["relation"], np.random.default_rng(0))[1],
        **{f"minus_best_baseline_{s}": paired_delta(y, found[s], best_scores) for s in schemes},
        **{f"minus_outputs_only_stack_{s}": paired_delta(y, found[s], reference[s]) for s in schemes},
    }
    if test:
        report["test"] = test_look(feats, tasks, winner, schemes["relation"], statements, false)
    OUT.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("winner", "test") if k in report}, indent=1))


def test_look(
    feats: Features, tasks: dict, winner: dict, splits: list, statements: np.ndarray, false: np.ndarray
) -> dict:
    """The dev winner, fitted on all of dev (the stack on its relation-CV direction scores), on the
    hallucination TEST split against the best output baseline chosen on dev; one line in the test log."""
    dev = [r for r in tasks["hallucination"] if r["split"] == "dev"]
    items = [r for r in tasks["hallucination"] if r["split"] == "test"]
    y, ytest = np.array([r["label"] for r in dev]), np.array([r["label"] for r in items])
    blocks, c, mix = tuple(winner["blocks"]), winner["C"], winner.get("mix", 0)
    state = state_matrix(feats, dev, winner["position"], blocks)
    mixed = at_blocks(statements, blocks)
    weight = np.concatenate([np.ones(len(y)), np.full(len(false), mix * len(y) / len(false))])
    direction = _probe(c).fit(
        np.concatenate([state, mixed]), np.concatenate([y, false]), logisticregression__sample_weight=weight
    )
    extra = (mixed, false, mix) if mix else None
    stack = _probe(1.0).fit(np.column_stack([feats.outputs(dev), oof(state, y, splits, c, extra)]), y)

    def readout(rows: list[dict]) -> np.ndarray:
        z = direction.decision_function(state_matrix(feats, rows, winner["position"], blocks))
        return stack.decision_function(np.column_stack([feats.outputs(rows), z]))

    baseline = max(
        OUTPUT_BASELINES,
        key=lambda n: roc_auc_score(y, OUTPUT_BASELINES[n][1] * feats.scalar(dev, OUTPUT_BASELINES[n][0])),
    )
    scalar, sign = OUTPUT_BASELINES[baseline]
    ordinary = tasks["ordinary"]
    found = {
        "readout": metrics(ytest, readout(items), readout(ordinary)),
        baseline: metrics(ytest, sign * feats.scalar(items, scalar), sign * feats.scalar(ordinary, scalar)),
        "readout_minus_best_baseline": paired_delta(ytest, readout(items), sign * feats.scalar(items, scalar)),
        "items": {"total": len(items), "wrong": int(ytest.sum())},
    }
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True)
    line = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit.stdout.strip(),
        "set": "behaviour test (hallucination): falsehood dev-search winner " + winner["name"],
        "numbers": {"readout": found["readout"]["auroc"], baseline: found[baseline]["auroc"]},
        "command": COMMAND + " --test",
        "second_look": True,  # the hallucination test split was scored before (`experiments.behaviour --test`)
    }
    with (RESULTS / "test_log.jsonl").open("a") as log:
        log.write(json.dumps(line) + "\n")
    return found


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--test", action="store_true", help="also score the dev winner on the hallucination test split (logged)"
    )
    with threadpool_limits(1):  # thousands of small fits: one BLAS thread each (several spin on a shared CPU)
        main(parser.parse_args().test)
