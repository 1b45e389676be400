"""Open set: rank every concept of the pack for short texts by other hands; is the true concept near the top?

Texts are sentences of the reference corpus (hatcat/evidence/reference.py: fiction, Wikipedia, dialogue,
forum posts; never the project's templates) that name a concept by a lemma whose first WordNet sense
(`<lemma>.n.01`) is one of that (noun, base pack) concept's synsets and that no other concept lists. Each
sentence is labelled with that concept (a sentence naming two such concepts is left out); at most
`PER_CONCEPT` sentences per concept, concepts of every layer. Concepts are split in two by a hash of
their id, and dev texts come from the corpus's dev documents, test texts from its test documents.

Response-level scores compared on dev (every concept scored on every token of the text):
- `mean_activation`: mean probability over the tokens (the pack's read-out before calibration);
- `mean_calibrated` / `max_calibrated`: mean / max over the tokens of `ProbeBank.rank_score`, the
  activation logit less the concept's family-wise firing logit, over its corpus standard deviation;
- `mean_z` / `max_z`: the logit standardised against the corpus (mean and std on the dev tokens);
- `max_tail`: max over the tokens of (logit - corpus median) / (corpus 99.9% quantile - median);
- `words_only`: mean words-only probability (the words-only detector, reported beside the pack).
Behaviour rows (Deception) are left out of every ranking. For each score: recall@1, recall@10, median
rank of the true concept among all ranked concepts (95% bootstrap intervals over texts), the same within
the shortlist of the split's true concepts, and the concepts most often in the top 5 of texts about
something else (not the true concept, its ancestors or descendants).

    python -m experiments.open_set          # dev: every score; the best recall@10 is chosen
    python -m experiments.open_set --test   # test, once: the chosen score, the baseline and words only

Writes results/open_set.json; `--test` appends one line to results/test_log.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import re
import subprocess
import time
from collections import Counter

import numpy as np
import torch

from hatcat.config import Settings
from hatcat.evidence.dashboards import read as read_dashboards
from hatcat.evidence.reference import read_corpus
from hatcat.paths import RESULTS

PER_CONCEPT, MAX_TEXTS, SEED = 3, 400, 0
SCORES = ("mean_activation", "mean_calibrated", "max_calibrated", "mean_z", "max_z", "max_tail")
WORDS = "words_only"
OUT = RESULTS / "open_set.json"


def concept_split(concept: str) -> str:
    return "dev" if hashlib.sha256(concept.encode()).digest()[0] % 2 == 0 else "test"


def lemma_index(pack, concepts: set[str]) -> dict[str, str]:
    """lemma (spaces, lower case) -> the one concept whose synsets hold its first sense."""
    owners: dict[str, set[str]] = {}
    for c in pack:
        for lemma in c.lemmas:
            owners.setdefault(lemma.lower(), set()).add(c.id)
    index = {}
    for c in pack:
        if c.id not in concepts or c.source != "base" or c.pos != "n":
            continue
        for lemma in c.lemmas:
            key = lemma.lower()
            first = f"{key}.{c.pos or 'n'}.01"
            if (
                len(owners[key]) == 1
                and first in {s.lower() for s in c.synsets}
                and re.fullmatch(r"[a-z][a-z_]{3,}", key)
            ):
                index[key.replace("_", " ")] = c.id
    return index


def sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+|\n+", text)
    return [p.strip() for p in parts if 8 <= len(p.split()) <= 40]


def labelled_texts(docs: list[dict], index: dict[str, str], split: str) -> list[dict]:
    """At most PER_CONCEPT sentences per concept of `split`, from the corpus documents of `split`."""
    rng = np.random.default_rng(SEED)
    found: dict[str, list[str]] = {}
    for doc in docs:
        if doc["split"] != split:
            continue
        for sentence in sentences(doc["text"]):
            words = re.findall(r"[a-z]+", sentence.lower())
            grams = set(words) | {" ".join(p) for p in itertools.pairwise(words)}
            hits = {index[g] for g in grams if g in index}
            if len(hits) == 1 and concept_split(c := hits.pop()) == split:
                found.setdefault(c, []).append(sentence)
    texts = []
    for c in sorted(found):
        picked = rng.choice(len(found[c]), size=min(PER_CONCEPT, len(found[c])), replace=False)
        texts += [{"concept": c, "text": found[c][i]} for i in sorted(picked)]
    if len(texts) > MAX_TEXTS:
        texts = [texts[i] for i in sorted(rng.choice(len(texts), MAX_TEXTS, replace=False))]
    return texts


@torch.no_grad()
def score_texts(engine, texts: list[str], corpus: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """[texts, N] per response-level score."""
    from hatcat.pipeline import batched_text_states

    bank, monitor = engine.bank, engine.monitor
    out = {name: torch.zeros(len(texts), len(bank)) for name in (*SCORES, WORDS)}
    for batch in batched_text_states(engine.model, engine.tokenizer, monitor, texts):
        for i, (hidden, window, _tokens) in batch:
            act, words, _div = bank.scores(hidden, window)
            calibrated = bank.rank_score(act)
            logit = torch.logit(act.clamp(1e-7, 1 - 1e-7))
            z = (logit - corpus["corpus_mean"]) / corpus["corpus_std"]
            out["max_tail"][i] = ((logit - corpus["q50"]) / (corpus["q999"] - corpus["q50"]).clamp(min=0.2)).amax(0)
            out["mean_activation"][i] = act.mean(0)
            out["mean_calibrated"][i], out["max_calibrated"][i] = calibrated.mean(0), calibrated.amax(0)
            out["mean_z"][i], out["max_z"][i] = z.mean(0), z.amax(0)
            out[WORDS][i] = words.mean(0)
    keep = bank.rankable.cpu()
    return {k: v.masked_fill(~keep, float("-inf")) for k, v in out.items()}


def _interval(values: np.ndarray, stat, rng: np.random.Generator, n: int = 1000) -> list[float]:
    draws = [stat(values[rng.integers(0, len(values), len(values))]) for _ in range(n)]
    return [round(float(np.percentile(draws, 2.5)), 4), round(float(np.percentile(draws, 97.5)), 4)]


def evaluate(scores: torch.Tensor, truth: list[int], related: list[set[int]], names: list[str]) -> dict:
    """Ranks of the true concepts among all and within the shortlist; concepts recurring in others' top 5."""
    rng = np.random.default_rng(SEED)
    true = torch.tensor(truth)
    own = scores.gather(1, true[:, None])
    ranks = ((scores > own).sum(1) + 1).numpy()
    short = torch.tensor(sorted(set(truth)))
    sub = scores[:, short]
    short_ranks = ((sub > own).sum(1) + 1).numpy()
    top5 = scores.topk(5, dim=1).indices.tolist()
    recurring = Counter(c for row, rel in zip(top5, related) for c in row if c not in rel)
    share = {names[c]: round(n / len(truth), 3) for c, n in recurring.most_common(10)}
    r1, r10 = lambda r: float(np.mean(r <= 1)), lambda r: float(np.mean(r <= 10))
    return {
        "texts": len(truth),
        "recall_at_1": round(r1(ranks), 4),
        "recall_at_1_ci": _interval(ranks, r1, rng),
        "recall_at_10": round(r10(ranks), 4),
        "recall_at_10_ci": _interval(ranks, r10, rng),
        "median_rank": float(np.median(ranks)),
        "median_rank_ci": _interval(ranks, np.median, rng),
        "shortlist": {
            "size": len(short),
            "recall_at_1": round(r1(short_ranks), 4),
            "median_rank": float(np.median(short_ranks)),
        },
        "top5_of_unrelated": share,
        "max_top5_share": max(share.values(), default=0.0),
    }


def run(split: str, names: tuple[str, ...]) -> dict:
    from hatcat.engine import Engine

    settings = Settings.from_env()
    engine = Engine.from_settings(dataclasses.replace(settings, db="sqlite://"))
    bank, pack = engine.bank, engine.concepts
    rows = read_dashboards(bank.pack.folder) or {}
    defaults = {"corpus_mean": 0.0, "corpus_std": 1.0, "q50": 0.0, "q999": 1.0}
    corpus = {k: torch.tensor([rows.get(c, {}).get(k, d) for c in bank.concepts]) for k, d in defaults.items()}
    corpus["corpus_std"] = corpus["corpus_std"].clamp(min=1e-3)
    ranked = {c for c, ok in zip(bank.concepts, bank.rankable.tolist()) if ok}
    texts = labelled_texts(read_corpus(settings.cache_dir), lemma_index(pack, ranked), split)
    started = time.time()
    scores = score_texts(engine, [t["text"] for t in texts], corpus)
    truth = [bank.index[t["concept"]] for t in texts]
    related = [
        {
            bank.index[c]
            for c in (t["concept"], *pack.ancestors(t["concept"]), *_descendants(pack, t["concept"]))
            if c in bank.index
        }
        for t in texts
    ]
    layers = Counter(pack[t["concept"]].layer for t in texts)
    return {
        "split": split,
        "concepts": len(set(truth)),
        "texts_per_layer": {str(k): layers[k] for k in sorted(layers)},
        "calibrated_rows": bank.calibrated,
        "seconds": round(time.time() - started, 1),
        "scores": {name: evaluate(scores[name], truth, related, bank.concepts) for name in names},
        "examples": texts[:5],
    }


def _descendants(pack, concept: str) -> list[str]:
    out, todo = [], list(pack.children(concept))
    while todo:
        c = todo.pop()
        out.append(c)
        todo += pack.children(c)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test", action="store_true", help="look at the test split once (the score chosen on dev)")
    args = ap.parse_args()
    doc = json.loads(OUT.read_text()) if OUT.is_file() else {}
    if not args.test:
        dev = run("dev", (*SCORES, WORDS))
        chosen = max(SCORES, key=lambda s: (dev["scores"][s]["recall_at_10"], dev["scores"][s]["recall_at_1"]))
        doc = {"dev": dev, "chosen": chosen, "command": "python -m experiments.open_set [--test]"}
    else:
        if "chosen" not in doc:
            raise SystemExit("error: run the dev pass first (python -m experiments.open_set)")
        doc["test"] = run("test", tuple(dict.fromkeys((doc["chosen"], "mean_activation", WORDS))))
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        numbers = {
            k: {m: v[m] for m in ("recall_at_1", "recall_at_10", "median_rank", "max_top5_share")}
            for k, v in doc["test"]["scores"].items()
        }
        with (RESULTS / "test_log.jsonl").open("a") as log:
            log.write(
                json.dumps(
                    {"date": time.strftime("%Y-%m-%d"), "commit": commit, "set": "open_set test", "numbers": numbers}
                )
                + "\n"
            )
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    parts = {k: part["scores"] for k, part in doc.items() if isinstance(part, dict) and "scores" in part}
    brief = {
        k: {
            s: {m: v[m] for m in ("recall_at_1", "recall_at_10", "median_rank", "max_top5_share")}
            for s, v in sc.items()
        }
        for k, sc in parts.items()
    }
    print(json.dumps({"chosen": doc["chosen"], **brief}, indent=1))


if __name__ == "__main__":
    main()
