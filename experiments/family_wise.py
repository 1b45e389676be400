"""Family-wise firing on the model's own generations: expected concept firings per generated token.

Prompts are the opening sentences of held-out reference-corpus documents (text by others, the corpus's
test part); the model continues each greedily for `--tokens` tokens through `Engine.generate` (the Scheduler, all
in one running batch); every generated token is scored
with the shipped pack exactly as the monitor scores it, and a concept counts as firing when its
activation reaches the monitor's threshold: the family-wise one where the pack has its corpus calibration
(hatcat/evidence/calibration.py), and, beside it, the pack's own thresholds. Behaviour rows
(Deception) are not concepts and are not counted. The held-out corpus number is in the pack's
evidence.json (written by `python -m hatcat.corpus evidence`).

    python -m experiments.family_wise [--prompts 24] [--tokens 48]   -> results/family_wise.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re

import numpy as np
import torch

from experiments.machine import now
from hatcat.config import Settings
from hatcat.evidence.reference import read_corpus
from hatcat.evidence.view import info
from hatcat.generation import Finished, GenerationSettings
from hatcat.paths import RESULTS
from hatcat.pipeline import text_batches

OUT = RESULTS / "family_wise.json"


def prompts(docs: list[dict], n: int) -> list[str]:
    """The first sentence (8-40 words) of `n` test documents, spread over the registers."""
    rng = np.random.default_rng(0)
    out = []
    test = [d for d in docs if d["split"] == "test"]
    for i in rng.permutation(len(test)):
        first = next((s for s in re.split(r"(?<=[.!?])\s+|\n+", test[i]["text"]) if 8 <= len(s.split()) <= 40), None)
        if first:
            out.append(first)
        if len(out) == n:
            break
    return out


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=48)
    args = ap.parse_args()
    from hatcat.engine import Engine

    settings = Settings.from_env()
    engine = Engine.from_settings(dataclasses.replace(settings, db="sqlite://"))
    bank, tok = engine.bank, engine.tokenizer
    texts: list[tuple[str, str]] = []
    greedy = GenerationSettings(max_tokens=args.tokens, temperature=0.0)
    opening = prompts(read_corpus(settings.cache_dir), args.prompts)
    runs = [engine.generate(prompt, greedy) for prompt in opening]  # one running batch (the Scheduler)
    for prompt, run in zip(opening, runs, strict=True):
        finished = next(e.finished for e in run if isinstance(getattr(e, "finished", None), Finished))
        texts.append((prompt, finished.text))
    rankable = bank.rankable
    counts = {"family_wise": [], "pack_thresholds": []}
    for batch in text_batches(engine.model, tok, engine.monitor, [p + g for p, g in texts]):
        for i, (hidden, window, _tokens) in batch.states:
            act, _, _ = bank.scores(hidden, window)
            generated = len(tok(texts[i][1], add_special_tokens=False).input_ids)
            act = act[-generated:]  # the model's own tokens only
            counts["family_wise"] += ((act >= bank.act_threshold) & rankable).sum(1).tolist()
            counts["pack_thresholds"] += ((act >= bank.pack_threshold) & rankable).sum(1).tolist()
    rng = np.random.default_rng(0)
    result = {
        "date": now(),
        "prompts": len(texts),
        "generated_tokens": len(counts["family_wise"]),
        "calibrated_rows": bank.calibrated,
    }
    for rule, per_token in counts.items():
        values = np.array(per_token, dtype=float)
        boot = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(1000)]
        result[rule] = {
            "firings_per_token": round(float(values.mean()), 4),
            "ci95": [round(float(np.percentile(boot, 2.5)), 4), round(float(np.percentile(boot, 97.5)), 4)],
            "tokens_with_any": round(float((values > 0).mean()), 4),
        }
    evidence = info(bank.pack)
    result["held_out_corpus"] = evidence.get("expected_firings_per_token", {})
    result["bound"] = 0.1
    result["examples"] = [{"prompt": p, "generated": g} for p, g in texts[:3]]
    result["command"] = "python -m experiments.family_wise"
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(
        json.dumps(
            {k: result[k] for k in ("generated_tokens", "family_wise", "pack_thresholds", "held_out_corpus")}, indent=1
        )
    )


if __name__ == "__main__":
    main()
