"""Build the signal-validity data in `data/signal/` from text that other people wrote.

python -m experiments.build_signal_data

Sources (read at build time only; the built YAML files are committed, see data/NOTICE):
- Debian package `fortunes` (/usr/share/games/fortunes): quotations and jokes by many authors;
- PyPI package `chatterbot-corpus` (its English dialogue YAML files, read from the wheel);
- WordNet 3.0 (Debian `wordnet-base`, /usr/share/wordnet): the lexicographers' example sentences.

Outputs:
- `control.yaml`: ordinary text for false-positive rates, split by source: `dev` (chatterbot dialogue
  and four fortune files) and `test` (five other fortune files: other collections, other authors).
- `wordnet_examples.yaml`: test positives: per concept, WordNet example sentences of its synsets and
  their hyponyms that no training prompt uses, for concepts outside the dev set (natural scenes and
  divergence pairs); emotion concepts are listed apart.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import zipfile
from collections import Counter
from pathlib import Path

import networkx as nx
import yaml

from hatcat.concepts import load_pack
from hatcat.concepts.build import HYPONYM_POINTERS
from hatcat.concepts.wordnet import Synset, WordNet
from hatcat.train import DEFAULT_MELDS
from hatcat.training.prompts import build_prompts

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "signal"
FORTUNES = Path("/usr/share/games/fortunes")
WORDNET = Path("/usr/share/wordnet")
CONTROL_SOURCES = {
    "dev": ["chatterbot", "fortunes", "miscellaneous", "work", "men-women"],
    "test": ["people", "wisdom", "platitudes", "literature", "humorists"],
}
PER_SOURCE = 160  # texts per source: about 12k tokens per split
MIN_WORDS, MAX_WORDS = 6, 60


def fortune_texts(name: str) -> list[str]:
    """One text per fortune cookie, attribution lines and indentation removed."""
    raw = (FORTUNES / name).read_text(encoding="utf-8", errors="replace")
    out = []
    for cookie in raw.split("\n%\n"):
        lines = [ln.strip() for ln in cookie.splitlines() if not re.match(r"\s*--", ln)]
        text = " ".join(ln for ln in lines if ln)
        if MIN_WORDS <= len(text.split()) <= MAX_WORDS and re.search(r"[a-z]", text) and "|" not in text:
            out.append(text)
    return out


def chatterbot_texts(wheel: Path) -> list[str]:
    """Each English dialogue's first two turns joined: a short exchange in a chat register."""
    out = []
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(n for n in zf.namelist() if "/data/english/" in n and n.endswith(".yml")):
            doc = yaml.safe_load(zf.read(name))
            for convo in doc.get("conversations", []):
                turns = [str(t).strip() for t in convo[:2] if t]
                text = " ".join(turns)
                if MIN_WORDS <= len(text.split()) <= MAX_WORDS:
                    out.append(text)
    return out


def control_corpus(wheel: Path, seed: int = 0) -> dict[str, list[dict[str, str]]]:
    rng = random.Random(seed)
    corpus: dict[str, list[dict[str, str]]] = {}
    for split, sources in CONTROL_SOURCES.items():
        rows = []
        for source in sources:
            texts = chatterbot_texts(wheel) if source == "chatterbot" else fortune_texts(source)
            texts = sorted(set(texts))
            rng.shuffle(texts)
            rows += [{"source": source, "text": t} for t in texts[:PER_SOURCE]]
        corpus[split] = rows
    return corpus


def wordnet_examples(dev_concepts: set[str], min_examples: int = 3, cap: int = 6) -> dict[str, dict[str, list[str]]]:
    """Per concept outside the dev set: example sentences of its synsets and their hyponyms that
    no training prompt uses; an example that would label two concepts is dropped."""
    pack = load_pack(None, melds=DEFAULT_MELDS)
    used = {p.text for p in build_prompts(pack, pack.ids)}  # every training prompt of the full pack
    wordnet = WordNet(WORDNET)
    emotions = {c for c in pack.ids if "EmotionalState" in nx.ancestors(pack.graph, c)}

    def closure(synset: Synset, seen: dict[tuple[str, int], Synset]) -> None:
        if synset.key not in seen:
            seen[synset.key] = synset
            for child in wordnet.related(synset, HYPONYM_POINTERS):
                closure(child, seen)

    found: dict[str, list[str]] = {}
    for c in pack:
        if c.id in dev_concepts:
            continue
        seen: dict[tuple[str, int], Synset] = {}
        for name in c.synsets:
            if (synset := wordnet.synset(name)) is not None:
                closure(synset, seen)
        examples = [e for s in seen.values() for e in s.examples]
        examples = [e for e in dict.fromkeys(examples) if len(e.split()) >= 4 and e not in used]
        if len(examples) >= min_examples:
            found[c.id] = examples
    counts = Counter(e for ex in found.values() for e in ex)
    clean = {c: [e for e in ex if counts[e] == 1][:cap] for c, ex in found.items()}
    clean = {c: ex for c, ex in clean.items() if len(ex) >= min_examples}
    return {
        "concepts": {c: ex for c, ex in clean.items() if c not in emotions},
        "emotions": {c: ex for c, ex in clean.items() if c in emotions},
    }


def dev_concepts() -> set[str]:
    scenes = yaml.safe_load((ROOT / "data" / "eval" / "natural_scenes.yaml").read_text())
    pairs = yaml.safe_load((ROOT / "data" / "eval" / "divergence_pairs.yaml").read_text())
    return {c["id"] for c in scenes["concepts"]} | {p["concept"] for p in pairs["pairs"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.build_signal_data", description=__doc__.splitlines()[0])
    ap.add_argument("--chatterbot-wheel", required=True, type=Path, help="chatterbot_corpus-1.3.3 wheel file")
    args = ap.parse_args(argv)
    if not FORTUNES.is_dir() or not WORDNET.is_dir():
        print("build_signal_data: needs Debian packages fortunes and wordnet-base", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    header = "# Built by `python -m experiments.build_signal_data`; sources and licenses in data/NOTICE.\n"
    control = control_corpus(args.chatterbot_wheel)
    (OUT / "control.yaml").write_text(header + yaml.safe_dump(control, sort_keys=False, width=120))
    examples = wordnet_examples(dev_concepts())
    (OUT / "wordnet_examples.yaml").write_text(header + yaml.safe_dump(examples, sort_keys=True, width=120))
    print({split: len(rows) for split, rows in control.items()}, {k: len(v) for k, v in examples.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
