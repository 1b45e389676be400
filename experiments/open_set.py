"""Open set: rank every concept of the pack for short texts by other hands; is the true concept near the top?

Texts are sentences of the reference corpus (hatcat/evidence/reference.py: fiction, Wikipedia, dialogue,
forum posts; never the project's templates) that name a concept by a lemma whose first WordNet sense
(`<lemma>.n.01`) is one of that (noun, base pack) concept's synsets and that no other concept lists. Each
sentence is labelled with that concept (a sentence naming two such concepts is left out); at most
`PER_CONCEPT` sentences per concept, concepts of every layer. Concepts are split in two by a hash of
their id, and dev texts come from the corpus's dev documents, test texts from its test documents.

The fresh test set (`--test`): the old test split was looked at twice and is spent; the fresh one takes
sentences of the same test documents for the test half of the concepts that neither the dev nor the old
test draw picked (another seed), so none of its texts informed anything.

Response-level scores compared on dev (every concept scored on every token of the text):
- `mean_activation`: mean probability over the tokens (the pack's read-out before calibration);
- `max_z` / `mean_z` / `max_z+mean_z`: the logit standardised against the corpus (dashboards' dev mean and
  std), max / mean over the tokens / their sum (max z was the previous choice);
- `max_tail`: max over the tokens of (logit - corpus median) / (corpus 99.9% quantile - median);
- `max_act_surprisal`: max over the tokens of the activation side's surprisal on the corpus (hatcat/ranking.py);
- `max_joint` / `top2_joint`: the rank score (`ProbeBank.rank_score`: activation + words-only surprisal), max /
  mean of the two highest tokens;
- `response` (margin 2, hatcat/ranking.py's OWN_EVIDENCE) and `response_margin_1` / `_4`: top2_joint with the
  hierarchy rule (a child above its parent by less than the margin is placed just below it) - `response` is
  what the monitor's summaries rank by (`Monitor.top_concepts`); `response_cap_parent`: the other hierarchy
  design tried, every child capped at its best parent's score plus the margin;
- `words_only`: mean words-only probability (the words-only detector, reported beside the pack), and
  `words_surprisal` (top2 of the words side's surprisal alone).
Behaviour rows (Deception) are left out of every ranking. For each score: recall@1, recall@10, median
rank of the true concept among all ranked concepts (95% bootstrap intervals over texts), the same within
the shortlist of the split's true concepts, and the concepts most often in the top 5 of texts about
something else (not the true concept, its ancestors or descendants). Per-token logits are cached per split
(`<cache>/open_set/`), so the dev search reruns in seconds.

    python -m experiments.open_set          # dev: every score; the best recall@10 (then @1) is chosen
    python -m experiments.open_set --test   # the fresh test set, once: the chosen score, the baseline, words only

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
from pathlib import Path

import numpy as np
import torch

from hatcat.config import Settings
from hatcat.evidence.dashboards import read as read_dashboards
from hatcat.evidence.reference import read_corpus
from hatcat.paths import RESULTS
from hatcat.ranking import OWN_EVIDENCE, own_evidence, response_level, top2

PER_CONCEPT, MAX_TEXTS, SEED, FRESH_SEED = 3, 400, 0, 1
SCORES = (
    "mean_activation",
    "max_z",
    "mean_z",
    "max_z+mean_z",
    "max_tail",
    "max_act_surprisal",
    "max_joint",
    "top2_joint",
    "response",
    "response_margin_1",
    "response_margin_4",
    "response_cap_parent",
)
WORDS = ("words_only", "words_surprisal")
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


def labelled_texts(
    docs: list[dict], index: dict[str, str], split: str, exclude: frozenset[str] = frozenset(), seed: int = SEED
) -> list[dict]:
    """At most PER_CONCEPT sentences per concept of `split`, from the corpus documents of `split`, none in
    `exclude`, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    found: dict[str, list[str]] = {}
    for doc in docs:
        if doc["split"] != split:
            continue
        for sentence in sentences(doc["text"]):
            words = re.findall(r"[a-z]+", sentence.lower())
            grams = set(words) | {" ".join(p) for p in itertools.pairwise(words)}
            hits = {index[g] for g in grams if g in index}
            if len(hits) == 1 and concept_split(c := hits.pop()) == split and sentence not in exclude:
                found.setdefault(c, []).append(sentence)
    texts = []
    for c in sorted(found):
        picked = rng.choice(len(found[c]), size=min(PER_CONCEPT, len(found[c])), replace=False)
        texts += [{"concept": c, "text": found[c][i]} for i in sorted(picked)]
    if len(texts) > MAX_TEXTS:
        texts = [texts[i] for i in sorted(rng.choice(len(texts), MAX_TEXTS, replace=False))]
    return texts


def split_texts(docs: list[dict], index: dict[str, str], split: str) -> list[dict]:
    """`dev`, `test` (the old, spent test draw) or `fresh`: the test half's concepts in the test documents,
    sentences that neither the dev nor the old test draw holds, another seed."""
    if split != "fresh":
        return labelled_texts(docs, index, split)
    seen = frozenset(t["text"] for old in ("dev", "test") for t in labelled_texts(docs, index, old))
    return labelled_texts(docs, index, "test", exclude=seen, seed=FRESH_SEED)


@torch.no_grad()
def token_logits(engine, texts: list[str], path: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per text its activation and words-only logits [T, N] (fp16), cached at `path` for these texts."""
    from hatcat.pipeline import text_batches

    if path.is_file():
        saved = torch.load(path, weights_only=True)
        if saved["key"] == hashlib.sha256("\n".join(texts).encode()).hexdigest():
            return list(zip(saved["act"], saved["words"]))
    bank = engine.bank
    out: list = [None] * len(texts)
    for batch in text_batches(engine.model, engine.tokenizer, engine.monitor, texts):
        for i, (hidden, window, _tokens) in batch.states:
            act, words, _div = bank.scores(hidden, window)
            out[i] = tuple(torch.logit(p.clamp(1e-7, 1 - 1e-7)).half() for p in (act, words))
    path.parent.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    torch.save({"key": key, "act": [a for a, _ in out], "words": [w for _, w in out]}, path)
    return out


def score_texts(monitor, logits: list[tuple[torch.Tensor, torch.Tensor]], corpus: dict) -> dict[str, torch.Tensor]:
    """[texts, N] per response-level score."""
    bank = monitor.bank
    names = (*SCORES, *WORDS)
    out = {name: torch.zeros(len(logits), len(bank)) for name in names if "response" not in name}
    for i, (a, w) in enumerate(logits):
        logit, words = a.float(), w.float()
        act, text = torch.sigmoid(logit), torch.sigmoid(words)
        z = (logit - corpus["corpus_mean"]) / corpus["corpus_std"]
        spread = (corpus["q999"] - corpus["q50"]).clamp(min=0.2)
        out["mean_activation"][i] = act.mean(0)
        out["max_z"][i], out["mean_z"][i] = z.amax(0), z.mean(0)
        out["max_tail"][i] = ((logit - corpus["q50"]) / spread).amax(0)
        out["max_act_surprisal"][i] = bank.surprisal["act"](logit).amax(0)
        joint = bank.rank_score(act, text)
        out["max_joint"][i] = joint.amax(0)
        out["top2_joint"][i] = response_level(top2(joint[None]))[0]
        out["words_only"][i] = text.mean(0)
        out["words_surprisal"][i] = response_level(top2(bank.surprisal["words"](words)[None]))[0]
    out["max_z+mean_z"] = out["max_z"] + out["mean_z"]
    for name, margin in (("response", OWN_EVIDENCE), ("response_margin_1", 1.0), ("response_margin_4", 4.0)):
        out[name] = own_evidence(out["top2_joint"], monitor.parent_edges, margin)
    child, parent = monitor.parent_edges  # the other design tried: a child capped at its best parent + the margin
    best_parent = torch.full_like(out["top2_joint"], float("-inf")).scatter_reduce(
        1, child.expand(len(logits), -1), out["top2_joint"][:, parent], "amax"
    )
    out["response_cap_parent"] = torch.minimum(out["top2_joint"], best_parent + OWN_EVIDENCE)
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
    texts = split_texts(read_corpus(settings.cache_dir), lemma_index(pack, ranked), split)
    started = time.time()
    cache = settings.cache_dir / "open_set" / f"{split}-{bank.pack.checksum[:16]}.pt"
    logits = token_logits(engine, [t["text"] for t in texts], cache)
    scores = score_texts(engine.monitor, logits, corpus)
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


FRESH = "fresh test set (new: test-half concepts, test documents, sentences no earlier draw picked)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test", action="store_true", help="look at the fresh test set once (the score chosen on dev)")
    args = ap.parse_args()
    doc = json.loads(OUT.read_text()) if OUT.is_file() else {}
    if not args.test:
        dev = run("dev", (*SCORES, *WORDS))
        chosen = max(SCORES, key=lambda s: (dev["scores"][s]["recall_at_10"], dev["scores"][s]["recall_at_1"]))
        spent = {k: doc[k] for k in ("old_test", "fresh_test") if k in doc} | (
            {"old_test": doc["test"]} if "test" in doc else {}
        )
        doc = {"dev": dev, "chosen": chosen, "command": "python -m experiments.open_set [--test]", **spent}
    else:
        if "chosen" not in doc:
            raise SystemExit("error: run the dev pass first (python -m experiments.open_set)")
        doc["fresh_test"] = run("fresh", tuple(dict.fromkeys((doc["chosen"], "mean_activation", "words_only"))))
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        numbers = {
            k: {m: v[m] for m in ("recall_at_1", "recall_at_10", "median_rank", "max_top5_share")}
            | {"shortlist_recall_at_1": v["shortlist"]["recall_at_1"]}
            for k, v in doc["fresh_test"]["scores"].items()
        }
        with (RESULTS / "test_log.jsonl").open("a") as log:
            line = {"date": time.strftime("%Y-%m-%d"), "commit": commit, "set": f"open_set {FRESH}", "numbers": numbers}
            log.write(json.dumps(line | {"look": "first look at this new set"}) + "\n")
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
