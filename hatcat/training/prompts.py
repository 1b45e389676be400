"""Training prompts per concept, in three disjoint splits, and the negatives the graph implies.

Each concept gets prompts from what the pack knows about it: its definition, its lemmas used
in context, "X is a kind of Y" category relations (to its parents and from its children and
hyponyms), WordNet example sentences, and a meld's own example sentences.

The splits are held out from each other by construction:
- `train`, `val` and `test` use disjoint template sets;
- the concept's lemmas and hyponyms are dealt round-robin to the splits, so a held-out prompt
  names the concept with another word than training did whenever the concept has several;
- a string never appears in two splits (later splits drop what an earlier split already has).

Negatives come from the hierarchy: hard ones are siblings and cousins, easy ones distant
concepts; nothing that is an ancestor or descendant of the concept is ever its negative.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass

import networkx as nx

from hatcat.concepts import Concept, ConceptPack

SPLITS = ("train", "val", "test")

# {w} = a word for the concept, {d} = its definition, {k} = a broader term, {n} = a narrower term.
_CONTEXT = {
    "train": (
        "She spent the whole afternoon thinking about {w}.",
        "The article was mostly about {w}.",
        "Everyone in the room was talking about {w}.",
        "He wrote a long report on {w}.",
        "Our next lesson covers {w}.",
        "The documentary showed a lot of {w}.",
    ),
    "val": (
        "They could not stop discussing {w} at dinner.",
        "The museum had a whole exhibit on {w}.",
        "My grandmother told me a story about {w}.",
    ),
    "test": (
        "Last week the newspaper ran a feature on {w}.",
        "The students were asked to write an essay on {w}.",
        "I keep coming back to the topic of {w}.",
    ),
}
_DEFINITION = {
    "train": ("{W}: {d}.", 'The word "{w}" means {d}.'),
    "val": ("By {w} we mean {d}.",),
    "test": ("In the dictionary, {w} is defined as {d}.",),
}
_BROADER = {  # the concept is a kind of k
    "train": ("{W} is a kind of {k}.", "One type of {k} is {w}."),
    "val": ("{W} belongs to the category of {k}.",),
    "test": ("{W} can be classified as a form of {k}.",),
}
_NARROWER = {  # n is a kind of the concept
    "train": ("{N} is a kind of {w}.", "An example of {w} is {n}."),
    "val": ("{N} is one particular form of {w}.",),
    "test": ("A good instance of {w} would be {n}.",),
}


@dataclass(frozen=True)
class Prompt:
    """One training sentence about one concept."""

    concept: str
    text: str
    split: str
    positive: bool = True  # False: a meld's own negative example for this concept


def words(term: str) -> str:
    """A SUMO id or WordNet lemma as plain words: `EmotionalState` -> `emotional state`."""
    term = term.replace("_", " ")
    if " " not in term and term != term.lower() and term != term.upper():
        term = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", term).lower()
    return term.strip()


def concept_prompts(c: Concept, seed: int = 0) -> list[Prompt]:
    """All prompts for one concept across the three splits (deterministic for a seed)."""
    rng = random.Random(zlib.crc32(f"{seed}:{c.id}".encode()))
    names = _dedupe([words(x) for x in c.lemmas] or [words(c.id)])
    narrower = _dedupe([words(x) for x in (*c.hyponyms, *c.children)])
    broader = _dedupe([words(x) for x in c.parents])
    definition = c.definition.rstrip(". ") if c.definition and not c.has_placeholder_definition else ""
    if definition[1:2].islower():  # it continues a sentence: "X means intentionally ..."
        definition = definition[0].lower() + definition[1:]
    examples = list(c.examples) + list(c.positive_examples)
    rng.shuffle(examples)

    seen: set[str] = set()
    prompts: list[Prompt] = []
    for index, split in enumerate(SPLITS):
        name = _deal(names, index)
        texts = [t.format(w=name) for t in _CONTEXT[split]]
        if definition:
            texts += [_fill(t, w=name, d=definition) for t in _DEFINITION[split]]
        for k in broader[:2]:
            texts += [_fill(t, w=name, k=k) for t in _BROADER[split]]
        for j, template in enumerate(_NARROWER[split]):
            if narrower:
                texts.append(_fill(template, w=name, n=_deal(narrower, index * 2 + j)))
        texts += examples[index::3]
        for text in texts:
            if text not in seen:
                seen.add(text)
                prompts.append(Prompt(c.id, text, split))
        prompts += [Prompt(c.id, text, split, positive=False) for text in c.negative_examples[index::3]]
    return prompts


def _fill(template: str, **values: str) -> str:
    capitals = {key.upper(): value[:1].upper() + value[1:] for key, value in values.items()}
    return template.format(**values, **capitals)


def _deal(items: list[str], index: int) -> str:
    return items[index % len(items)]


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(item for item in items if item))


def build_prompts(pack: ConceptPack, concept_ids: list[str], seed: int = 0) -> list[Prompt]:
    """Prompts for the given concepts, in concept order."""
    return [p for cid in concept_ids for p in concept_prompts(pack[cid], seed)]


def related(pack: ConceptPack, cid: str) -> set[str]:
    """The concept, its ancestors and its descendants: never negatives for it."""
    return {cid} | nx.ancestors(pack.graph, cid) | nx.descendants(pack.graph, cid)


def negatives(
    pack: ConceptPack, cid: str, pool: list[str], n_hard: int = 8, n_easy: int = 8, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Hard (siblings, then cousins) and easy (distant) negative concepts for `cid`, drawn from `pool`."""
    rng = random.Random(zlib.crc32(f"neg:{seed}:{cid}".encode()))
    pool_set = set(pool)
    excluded = related(pack, cid)
    hard = [s for s in pack.siblings(cid) if s in pool_set and s not in excluded]
    if len(hard) < n_hard:
        cousins = {
            c for p in pack.parents(cid) for gp in pack.parents(p) for u in pack.children(gp) for c in pack.children(u)
        }
        hard += sorted(c for c in cousins if c in pool_set and c not in excluded and c not in hard)
    hard = rng.sample(hard, min(n_hard, len(hard)))
    easy: list[str] = []
    for candidate in rng.sample(pool, min(len(pool), 4 * n_easy)):
        if len(easy) == n_easy:
            break
        if candidate not in excluded and candidate not in hard and candidate not in easy:
            easy.append(candidate)
    return sorted(hard), sorted(easy)
