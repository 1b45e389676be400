"""The divergence search on DEV (issue 22, item 5) -> results/divergence_search.json.

    python -m experiments.divergence_search            # dev only; needs `experiments.divergence_states`
    python -m experiments.divergence_search --cost     # what the `next` words side costs a decode step

Response-level definitions of divergence, each a fixed orientation (higher flags the behaviour), on
the dev items of five tasks: hallucination (wrong answers), lying (a lie vs the honest answer to the
same fact), withholding (a kept secret vs a stated public fact), and the two controls that hold the
prompt fixed: lying_same_frame (lies vs true answers under the same liar frames) and
withholding_same_prompt (secrets kept vs secrets leaked under the same "Secret" note). Beside them:
the shipped definition, `minus_words` (the words side alone), the output-only baselines (sign chosen
on dev) and, where the answers' words differ, a lexical classifier on the answer text.

A token's score from its concepts' activation logits `a` [N] (the tap block) and a words side `w` [N]:
- `capped` (the shipped formula): tanh((min(a, a_cap) - w) / D), the largest magnitude among the
  concepts that fire (0 when none does);
- `uncapped`: tanh((a - w) / D) the same way;
- `past`: the largest (a - firing logit) among the concepts that fire (activation magnitude past the threshold);
- `resid_*`: a per-concept least-squares fit a = alpha + beta * w on the reference corpus's tokens
  (never on the benchmark), its residual in residual standard deviations; `resid_fired`: the largest
  among the concepts that fire, `resid_max`: the largest over all concepts, `resid_top10`: the mean of
  the 10 largest;
and a response's score is the mean (as shipped) or the max over its tokens. Words sides: see
`experiments.divergence_states` (`w8_out` as `behaviour_states` read it, `w8` the stream's window with
the prompt, `w32`, `w8_self`, `next` the model's own next-token distribution, `act6` block 6 through
the bank).

Decision rule (fixed before the run): the definition with the highest mean dev AUROC over the five
tasks wins if the paired bootstrap interval of its mean-AUROC difference is above zero against both the
shipped definition and `minus_words`.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from experiments.behaviour import FOLDS, OUTPUT_BASELINES, lexical, load_items, metrics
from experiments.divergence_states import cache_dir, cached
from hatcat.config import Settings
from hatcat.paths import RESULTS, ROOT
from hatcat.probes import ProbeBank, ProbePack

BOOT = 1000
CHUNK = 64  # items whose tokens are scored together
TOP = 12  # definitions reported with intervals (all are ranked)
WORDS = ("w8_out", "w8", "w32", "w8_self", "next", "act6")
FORMS = ("capped", "uncapped", "past", "resid_fired", "resid_max", "resid_top10")
SAME_PROMPT = "withholding_same_prompt"
TASKS = ("hallucination", "lying", "withholding", "lying_same_frame", SAME_PROMPT)
PACK = ROOT / "probes" / "gemma-3-270m" / "sumo-wordnet-v1+safety-v1"


def dev_tasks() -> dict[str, list[dict]]:
    """Dev items per task (label 1: the behaviour happened), ordinary text apart."""
    tasks = {t: [r for r in rows if r["split"] == "dev"] for t, rows in load_items().items() if t != "ordinary"}
    tasks["ordinary"] = load_items()["ordinary"]
    honest = [json.loads(line) for line in (ROOT / "data" / "behaviour" / "outputs_honest.jsonl").open()]
    secret = [r for r in honest if r["task"] == "withholding" and r["frame"] == "secret" and r["split"] == "dev"]
    tasks[SAME_PROMPT] = [{**r, "label": int(not r["revealed"])} for r in secret]
    return tasks


class Fits:
    """Per-concept least-squares fits of the activation logit on each words side, on reference tokens."""

    def __init__(self, reference: dict[str, torch.Tensor]) -> None:
        a = reference["act15"]
        self.coef: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for side in (k for k in reference if k != "act15"):
            w = reference[side]
            wm, am = w.mean(0), a.mean(0)
            beta = ((w - wm) * (a - am)).mean(0) / (w - wm).var(0, unbiased=False).clamp(min=1e-6)
            alpha = am - beta * wm
            sigma = (a - alpha - beta * w).std(0).clamp(min=1e-3)
            self.coef[side] = (alpha, beta, sigma)

    def residual(self, side: str, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        alpha, beta, sigma = self.coef[side]
        return (a - alpha - beta * w) / sigma


def token_scores(a: torch.Tensor, w: torch.Tensor, side: str, bank: ProbeBank, fits: Fits) -> dict[str, torch.Tensor]:
    """{form: [T]} for tokens' activation logits `a` [T, N] against one words side `w` [T, N]."""
    resid = fits.residual(side, a, w)
    out = {"resid_max": resid.amax(1), "resid_top10": resid.topk(10, dim=1).values.mean(1)}
    for firing, threshold in (("", bank.act_threshold), ("@pack", bank.pack_threshold)):
        fire = torch.logit(threshold.clamp(1e-6, 1 - 1e-6))
        fired = a >= fire

        def largest_fired(values: torch.Tensor, fired: torch.Tensor = fired) -> torch.Tensor:
            masked = torch.where(fired, values, torch.zeros_like(values))
            return masked.gather(1, masked.abs().argmax(1, keepdim=True))[:, 0]

        out["capped" + firing] = largest_fired(torch.tanh((torch.minimum(a, bank.act_cap) - w) / bank.divergence_scale))
        out["uncapped" + firing] = largest_fired(torch.tanh((a - w) / bank.divergence_scale))
        out["past" + firing] = torch.where(fired, a - fire, torch.full_like(a, -1e9)).amax(1).clamp(min=0)
        out["resid_fired" + firing] = torch.where(fired, resid, torch.full_like(a, -1e9)).amax(1).clamp(min=-10)
    return out


def response_scores(found: dict, ids: list[str], bank: ProbeBank, fits: Fits) -> dict[str, np.ndarray]:
    """{definition: [items]}: every (side, form, aggregation) plus the shipped colour and the words alone."""
    items = [found[i] for i in ids]
    starts = np.cumsum([0] + [len(it["act15"]) for it in items])[:-1]
    counts = np.array([len(it["act15"]) for it in items])
    out: dict[str, np.ndarray] = {}

    def per_item(name: str, values: np.ndarray) -> None:  # a response: the mean and the max over its tokens
        out[f"{name}:mean"] = np.add.reduceat(values, starts) / counts
        out[f"{name}:max"] = np.maximum.reduceat(values, starts)

    per_token: dict[str, list[torch.Tensor]] = {}
    for k in range(0, len(items), CHUNK):  # all tokens of CHUNK items at once
        part = items[k : k + CHUNK]
        a = torch.cat([it["act15"] for it in part]).float()
        for side in fits.coef:
            w = torch.cat([it[side] for it in part]).float()
            for form, values in token_scores(a, w, side, bank, fits).items():
                per_token.setdefault(f"{form}:{side}", []).append(values)
            if side != "act6":  # the words alone, as behaviour_states (the activation replaced by its cap)
                minus = torch.tanh((bank.act_cap - w) / bank.divergence_scale).mean(1)
                per_token.setdefault(f"minus_words:{side}", []).append(minus)
    for name, values in per_token.items():
        per_item(name, torch.cat(values).numpy())
    out = {k: v for k, v in out.items() if not (k.startswith("minus_words") and k.endswith(":max"))}
    out = {k.removesuffix(":mean") if k.startswith("minus_words") else k: v for k, v in out.items()}
    out["shipped"] = np.array([float(it["colour"][0].mean()) for it in items])  # Monitor.records, w8_out window
    out["shipped_stream_window"] = np.array([float(it["colour"][1].mean()) for it in items])
    stats = [it["stats"].float() for it in items]
    features = np.array([[t.mean(), t.min(), e.mean(), t[0].exp()] for t, e in stats])
    out.update({name: features[:, n] for n, name in enumerate(OUTPUT_BASELINES)})
    return out


def mean_auroc_delta(sets: list[tuple[np.ndarray, np.ndarray, np.ndarray]], rng: np.random.Generator) -> dict:
    """Mean over tasks of AUROC(a) - AUROC(b), with a paired bootstrap over items within each task."""
    point = np.mean([roc_auc_score(y, a) - roc_auc_score(y, b) for y, a, b in sets])
    boots = []
    for _ in range(BOOT):
        deltas = []
        for y, a, b in sets:
            k = rng.integers(0, len(y), len(y))
            deltas.append(roc_auc_score(y[k], a[k]) - roc_auc_score(y[k], b[k]))
        boots.append(np.mean(deltas))
    return {"delta": round(float(point), 4), "ci": [round(float(np.percentile(boots, q)), 4) for q in (2.5, 97.5)]}


def extra_sides(found: dict, settings: Settings) -> list[str]:
    """Words sides extracted apart (`divergence_states --next-top K`, for the search's items only), merged
    into `found`; items without them leave the search (the counts say so)."""
    names = []
    for folder in sorted(cache_dir(settings).parent.glob(cache_dir(settings).name + "-next*")):
        name = folder.name.split("-")[-1]
        for item_id, values in cached(folder).items():
            if item_id in found:
                found[item_id][name] = values[name]
        names.append(name)
    for item_id in [i for i, item in found.items() if any(n not in item for n in names)]:
        del found[item_id]
    return names


@torch.inference_mode()
def next_side_cost(repeats: int = 20) -> dict[str, float]:
    """Per decode step of one stream, in the same run: ms of the output layer (what plain generation
    pays anyway) and ms that the `next` words side adds (softmax over the vocabulary, then the expected
    input embedding: one more product of the size of the output layer)."""
    from hatcat.engine import Engine

    engine = Engine.from_settings(Settings.from_env())
    head, embed = engine.model.get_output_embeddings(), engine.model.get_input_embeddings()
    hidden = torch.randn(1, embed.weight.shape[1], dtype=embed.weight.dtype, device=embed.weight.device)
    logits = head(hidden)

    def timed(step) -> float:
        step()
        began = time.perf_counter()
        for _ in range(repeats):
            step()
        return round((time.perf_counter() - began) / repeats * 1000, 2)

    def top(k: int) -> torch.Tensor:
        values, indices = logits.topk(k)
        return values.float().softmax(-1).to(embed.weight.dtype)[:, None, :] @ embed.weight[indices]

    return {
        "output_layer_ms": timed(lambda: head(hidden)),
        "next_side_added_ms": timed(lambda: logits.float().softmax(-1).to(embed.weight.dtype) @ embed.weight),
        "next64_side_added_ms": timed(lambda: top(64)),
    }


def main() -> None:
    if "--cost" in sys.argv:  # only the cost of the `next` words side, merged into the results file
        path = RESULTS / "divergence_search.json"
        report = json.loads(path.read_text())
        report["next_side_cost"] = {**next_side_cost(), "command": "python -m experiments.divergence_search --cost"}
        path.write_text(json.dumps(report, indent=1) + "\n")
        print(report["next_side_cost"])
        return
    started = time.time()
    settings = Settings.from_env()
    found = cached(cache_dir(settings))
    bank = ProbeBank(ProbePack.load(PACK))
    reference = [found[k] for k in found if k.startswith("r-")]
    sides = [*WORDS, *extra_sides(found, settings)]
    fits = Fits({side: torch.cat([r[side].float() for r in reference]) for side in ("act15", *sides)})
    tasks = dev_tasks()
    tasks = {t: [r for r in rows if r["id"] in found] for t, rows in tasks.items()}
    ordinary_ids = [r["id"] for r in tasks["ordinary"]]
    ordinary = response_scores(found, ordinary_ids, bank, fits)
    report: dict = {"command": "python -m experiments.divergence_search", "items": {}, "dev": {}}
    per_task: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    for task in TASKS:
        rows = tasks[task]
        y = np.array([r["label"] for r in rows])
        report["items"][task] = {"total": len(y), "positive": int(y.sum())}
        if len(set(y)) < 2:  # not extracted yet (a partial cache): left out, the counts say so
            continue
        scores = response_scores(found, [r["id"] for r in rows], bank, fits)
        for name in OUTPUT_BASELINES:  # output baselines: the sign that flags on dev
            if roc_auc_score(y, scores[name]) < 0.5:
                scores[name], ordinary[name + ":" + task] = -scores[name], -ordinary[name]
        if task != "hallucination":  # a bag of character n-grams of the answer (cross-validated on dev)
            scores["lexical"] = lexical(rows, rows, False)
            ordinary["lexical:" + task] = lexical(rows, tasks["ordinary"], True)
        per_task[task] = (y, scores)
    names = [n for n in next(iter(per_task.values()))[1] if n not in OUTPUT_BASELINES]
    baselines = [*OUTPUT_BASELINES, "lexical"]

    def point(name: str) -> float:
        return float(np.mean([roc_auc_score(y, s[name]) for y, s in per_task.values() if name in s]))

    ranked = sorted(names, key=lambda n: -point(n))
    best = next(n for n in ranked if not n.startswith(("minus_words", "shipped")))
    shown = [*ranked[:TOP], *(n for n in ranked[TOP:] if n.startswith(("minus_words", "shipped"))), *baselines]
    summary = {}
    for name in shown:  # intervals and recalls for the leaders, the shipped, the words alone and the baselines
        row = {}
        for task, (y, scores) in per_task.items():
            if name in scores:
                row[task] = metrics(y, scores[name], ordinary.get(name + ":" + task, ordinary.get(name)))
        row["mean_auroc"] = round(point(name), 4)
        summary[name] = row
    rng = np.random.default_rng(0)
    against = {}
    for other in ("shipped", "minus_words:w8_out"):
        sets = [(y, scores[best], scores[other]) for y, scores in per_task.values()]
        against[other] = mean_auroc_delta(sets, rng)
    wins = all(d["ci"][0] > 0 for d in against.values())
    # is the winner the output's own uncertainty in another form? its rank correlation with each output
    # baseline over all dev items, and per task the AUROC of the best output baseline stacked with it
    pooled = {n: np.concatenate([s[n] for _, s in per_task.values()]) for n in (best, *OUTPUT_BASELINES)}
    related = {n: round(float(spearmanr(pooled[best], pooled[n])[0]), 4) for n in OUTPUT_BASELINES}
    added = {}
    for task, (y, scores) in per_task.items():
        base = max(OUTPUT_BASELINES, key=lambda n: roc_auc_score(y, scores[n]))
        both = np.column_stack([scores[base], scores[best]])
        stacked = cross_val_predict(LogisticRegression(), both, y, cv=FOLDS, method="decision_function")
        added[task] = {"baseline": base, "alone": round(roc_auc_score(y, scores[base]), 4)}
        added[task]["with_best"] = round(roc_auc_score(y, stacked), 4)
    report["dev"] = summary
    report["ranking"] = [[n, round(point(n), 4)] for n in ranked]
    report["best"] = {"name": best, "mean_auroc": summary[best]["mean_auroc"], "minus": against, "wins": wins}
    report["best"].update({"spearman_with_output_baselines": related, "stacked_on_best_output_baseline": added})
    report["reference_tokens"] = int(sum(len(r["act15"]) for r in reference))
    report["seconds"] = round(time.time() - started, 1)
    path = RESULTS / "divergence_search.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({"items": report["items"], "ranking": report["ranking"][:TOP], "best": report["best"]}, indent=1))
    for n in ("shipped", "shipped_stream_window", "minus_words:w8_out", best, *baselines):
        print(n, summary[n]["mean_auroc"], {t: summary[n][t]["auroc"] for t in summary[n] if t != "mean_auroc"})


if __name__ == "__main__":
    main()
