"""Does the shipped `falsehood` read-out, through `/v1/analyze`, separate true from false statements
written by others, of kinds it was not fitted on, better than the model's own log-probability?

    python -m experiments.falsehood_statements   # -> results/falsehood_statements.json, results/test_log.jsonl

The read-out was fitted on the model's answers to LRE relation questions (`data/behaviour/`). The
sets here are of other kinds, written by others, and used by no read-out: general-knowledge
statements (`data/honesty/facts_true_false.csv`, RepE; it trained the pack's `Deception` concept, not
`falsehood`) and Spanish-English word translations (`data/truth/sp_en_trans.csv`, Geometry of Truth).

Procedure, fixed before the first look (a test: each set is scored once and logged; a later look,
e.g. after the analysis path changed, is logged with `second_look: true`):
- every statement as written, a false statement is the positive class;
- `falsehood`: `summary.behaviours.falsehood.score` of `/v1/analyze` (the real app on a loopback port,
  the shipped pack, up to 256 texts per request); `divergence`: the summary's `mean_divergence`;
- baselines from the same model in-process (a plain forward, log_softmax, gather; the same tokens as
  the read-out reads: every token after the first): minus the mean and minus the min token
  log-probability, signs fixed in advance (a less likely statement is flagged);
- AUROC with 95% bootstrap intervals over statements; `falsehood` minus the better of the two
  log-prob baselines on that set (picked on the set itself, which favours the baseline), paired bootstrap;
- the read-out's own threshold: the share of false statements fired on (recall) and of true ones (FPR).
"""

from __future__ import annotations

import csv
import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import torch

from experiments.behaviour import auroc_ci, paired_delta
from hatcat.api.protocol import MAX_ANALYZE_TEXTS
from hatcat.config import Settings
from hatcat.engine import Engine
from hatcat.paths import RESULTS, ROOT
from tests.support import start_app, stop_app

PACK = ROOT / "probes" / "gemma-3-270m" / "sumo-wordnet-v1+safety-v1"
SETS = {
    "repe_facts": ROOT / "data" / "honesty" / "facts_true_false.csv",
    "sp_en_trans": ROOT / "data" / "truth" / "sp_en_trans.csv",
}
OUT = RESULTS / "falsehood_statements.json"
COMMAND = "python -m experiments.falsehood_statements"


def read_set(path: Path) -> tuple[list[str], np.ndarray]:
    """(statements, labels with 1 = false)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["statement"] for r in rows], np.array([1 - int(r["label"]) for r in rows])


def analyze(client: httpx.Client, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(falsehood score, fired, mean divergence) per text from `/v1/analyze`."""
    found = []
    for start in range(0, len(texts), MAX_ANALYZE_TEXTS):
        reply = client.post("/v1/analyze", json={"input": texts[start : start + MAX_ANALYZE_TEXTS], "top_k": 1})
        reply.raise_for_status()
        found += [d["summary"] for d in sorted(reply.json()["data"], key=lambda d: d["index"])]
    falsehood = [s["behaviours"]["falsehood"] for s in found]
    return (
        np.array([b["score"] for b in falsehood]),
        np.array([b["fired"] for b in falsehood]),
        np.array([s["mean_divergence"] for s in found]),
    )


@torch.inference_mode()
def logprobs(engine: Engine, texts: list[str], batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(mean, min) log-probability of each text's tokens after the first, under the model."""
    model, tokenizer = engine.loaded.model, engine.loaded.tokenizer
    means, mins = [], []
    for start in range(0, len(texts), batch):
        enc = tokenizer(texts[start : start + batch], return_tensors="pt", padding=True, padding_side="right")
        enc = enc.to(engine.loaded.device)
        lp = model(**enc).logits[:, :-1].float().log_softmax(-1)
        took = lp.gather(-1, enc.input_ids[:, 1:, None])[..., 0]
        keep = enc.attention_mask[:, 1:].bool()
        means.append((took * keep).sum(1) / keep.sum(1))
        mins.append(took.masked_fill(~keep, torch.inf).min(1).values)
    return torch.cat(means).cpu().numpy(), torch.cat(mins).cpu().numpy()


def score_set(labels: np.ndarray, detectors: dict[str, np.ndarray], fired: np.ndarray) -> dict:
    out: dict = {"items": {"false": int(labels.sum()), "true": int((1 - labels).sum())}}
    for seed, (name, scores) in enumerate(detectors.items()):
        auroc, ci = auroc_ci(labels, scores, np.random.default_rng(seed))
        out[name] = {"auroc": auroc, "ci": ci}
    best = max(("minus_mean_logprob", "minus_min_logprob"), key=lambda n: out[n]["auroc"])
    out["best_logprob_baseline"] = {"name": best, **out[best]}
    out["falsehood_minus_best_baseline"] = paired_delta(labels, detectors["falsehood"], detectors[best])
    out["falsehood_fired"] = {
        "recall": round(float(fired[labels == 1].mean()), 4),
        "fpr": round(float(fired[labels == 0].mean()), 4),
    }
    return out


def main() -> None:
    t0 = time.time()
    data = {name: read_set(path) for name, path in SETS.items()}
    proc, base = start_app({"HATCAT_PROBE_PACK": str(PACK)}, Path("/tmp/hatcat-falsehood-statements.log"))
    try:
        with httpx.Client(base_url=base, timeout=600) as client:
            served = {name: analyze(client, texts) for name, (texts, _) in data.items()}
    finally:
        stop_app(proc)
    engine = Engine.from_settings(Settings.from_env())
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    results = {}
    for name, (texts, labels) in data.items():
        falsehood, fired, divergence = served[name]
        mean_lp, min_lp = logprobs(engine, texts)
        detectors = {
            "falsehood": falsehood,
            "minus_mean_logprob": -mean_lp,
            "minus_min_logprob": -min_lp,
            "divergence": divergence,
        }
        results[name] = score_set(labels, detectors, fired)
        log = RESULTS / "test_log.jsonl"
        seen = log.read_text() if log.exists() else ""
        line = {
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "commit": commit,
            "set": f"falsehood statements ({name})",
            "numbers": {k: results[name][k]["auroc"] for k in detectors}
            | {"falsehood_minus_best_baseline": results[name]["falsehood_minus_best_baseline"]},
            "command": COMMAND,
            "second_look": f'"set": "falsehood statements ({name})"' in seen,  # looked at before
        }
        with log.open("a") as out:
            out.write(json.dumps(line) + "\n")
        results[name]["second_look"] = line["second_look"]
    doc = {
        "command": COMMAND,
        "pack": str(PACK.relative_to(ROOT)),
        "label": "false statement = positive",
        "sources": {name: str(path.relative_to(ROOT)) for name, path in SETS.items()},
        "sets": results,
        "seconds": round(time.time() - t0, 1),
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
