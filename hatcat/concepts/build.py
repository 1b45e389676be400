"""Build the SUMO–WordNet concept pack from its sources (build time only).

Inputs: the layer files ``layer0.json`` … ``layer5.json`` (term, layer, category
children, WordNet synsets, lemmas, definition) and SUMO's ``.kif`` files, plus
optionally the WordNet 3.0 database.  Steps:

1. parents come from the layer files' ``category_children`` (and ``parent_sumo``
   of the layer-5 clusters);
2. a concept left without a parent (other than SUMO's root, ``Entity``) gets the
   nearest ancestor in the pack, at its own layer or above, along KIF
   ``subclass``/``subAttribute``/``subrelation``/``instance`` axioms, else along
   WordNet hypernyms of its canonical synset (an edge that would close a cycle is skipped);
3. "SUMO category: X" placeholders get X's English ``documentation`` from
   ``Merge.kif``, else the WordNet gloss of the concept's first synset, else the
   gloss of the WordNet sense of X's words (``BodyOfWater`` -> body_of_water)
   that sits under one of the concept's ancestors; definitions the layer files
   truncated with "..." get their full WordNet gloss;
4. WordNet adds hyponym lemmas, example sentences and antonyms.

The output is a function of the inputs only: a rebuild is byte-identical.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import networkx as nx

from hatcat.concepts.kif import nearest_in, read_kif
from hatcat.concepts.pack import FORMAT_VERSION, PACK_FILE, PLACEHOLDER_PREFIX, Concept, ConceptPack
from hatcat.concepts.wordnet import Synset, WordNet

PACK_ID = "sumo-wordnet-v1"
# Documentation text is taken from SUMO's IEEE-licensed upper ontology only; the
# domain ontologies are GPL, so their prose is kept out of the committed pack.
DOCUMENTATION_FILE = "Merge.kif"
LAYERS = range(6)
MAX_HYPONYMS = 24
MAX_EXAMPLES = 8
MAX_ANTONYMS = 12
HYPONYM_POINTERS = frozenset({"~", "~i"})
HYPERNYM_POINTERS = frozenset({"@", "@i"})
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
SOURCES = (
    "SUMO–WordNet abstraction layers (layer0-5.json)",
    "SUMO .kif ontology files (IEEE SUMO, Articulate Software)",
    "WordNet 3.0 (Princeton University)",
)


def read_layers(sources: Path) -> list[dict[str, Any]]:
    """The raw concept records of the six layer files, in (layer, term) order."""
    records = []
    for n in LAYERS:
        path = sources / f"layer{n}.json"
        if not path.is_file():
            raise FileNotFoundError(f"missing layer file {path}")
        records.extend(json.loads(path.read_text(encoding="utf-8"))["concepts"])
    return sorted(records, key=lambda r: (r["layer"], r["sumo_term"]))


def _unique(items: list[str], limit: int, exclude: Iterable[str] = ()) -> tuple[str, ...]:
    """The first ``limit`` distinct items not in ``exclude``, in order."""
    seen = set(exclude)
    kept: list[str] = []
    for item in items:
        if item not in seen:
            seen.add(item)
            kept.append(item)
    return tuple(kept[:limit])


class Builder:
    """Assemble the concept pack; ``log`` receives one-line progress messages."""

    def __init__(self, sources: Path, wordnet: WordNet | None, log: Callable[[str], None]) -> None:
        self.log = log
        self.records = read_layers(sources)
        log(f"read {len(self.records)} concepts from the layer files")
        kif_files = sorted(sources.glob("*.kif"))
        self.kif = read_kif(kif_files)
        merge = sources / DOCUMENTATION_FILE
        self.docs = read_kif([merge]).docs if merge.is_file() else {}
        log(
            f"read {len(kif_files)} KIF files: {len(self.kif.supers)} terms with super-terms, "
            f"{len(self.docs)} documented in {DOCUMENTATION_FILE}"
        )
        self.wordnet = wordnet
        self.synsets: dict[str, list[Synset]] = {r["sumo_term"]: self._synsets(r["synsets"]) for r in self.records}
        self.owners = self._synset_owners()

    def _synsets(self, names: list[str]) -> list[Synset]:
        if self.wordnet is None:
            return []
        return [s for s in map(self.wordnet.synset, names) if s is not None]

    def parents(self) -> dict[str, list[str]]:
        """Parents per term: the layer files' links, then restored links for orphans."""
        ids = {r["sumo_term"] for r in self.records}
        parents: dict[str, list[str]] = {term: [] for term in ids}
        for record in self.records:
            for child in record["category_children"]:
                if child in ids:
                    parents[child].append(record["sumo_term"])
            if record.get("parent_sumo") in ids:
                parents[record["sumo_term"]].append(record["parent_sumo"])
        graph = nx.DiGraph((p, c) for c, ps in parents.items() for p in ps)
        graph.add_nodes_from(ids)
        restored = {"kif": 0, "wordnet": 0, "cycle": 0}
        up_to_layer = {n: {r["sumo_term"] for r in self.records if r["layer"] <= n} for n in LAYERS}
        for record in self.records:
            term = record["sumo_term"]
            if parents[term] or record["sumo_depth"] == 0:
                continue
            allowed = up_to_layer[record["layer"]]
            candidates = nearest_in(term, self.kif.supers, allowed)
            how = "kif"
            if not candidates:
                candidates = self._wordnet_parents(record, allowed)
                how = "wordnet"
            for parent in candidates:
                if nx.has_path(graph, term, parent):
                    restored["cycle"] += 1
                    continue
                graph.add_edge(parent, term)
                parents[term].append(parent)
            restored[how] += bool(parents[term])
        self.log(
            f"restored parents: {restored['kif']} from KIF, {restored['wordnet']} from WordNet "
            f"hypernyms, {restored['cycle']} cyclic links skipped"
        )
        return {term: sorted(set(ps)) for term, ps in parents.items()}

    def _synset_owners(self) -> dict[tuple[str, int], list[str]]:
        owners: dict[tuple[str, int], list[str]] = {}
        for term, synsets in self.synsets.items():
            for synset in synsets:
                owners.setdefault(synset.key, []).append(term)
        return owners

    def _wordnet_parents(self, record: dict[str, Any], allowed: set[str]) -> list[str]:
        """Concepts in ``allowed`` owning the nearest WordNet hypernym of the record's
        canonical synset (or of all its synsets when it names none)."""
        if self.wordnet is None:
            return []
        canonical = self._synsets([record["canonical_synset"]] if record.get("canonical_synset") else [])
        frontier = canonical or self.synsets[record["sumo_term"]]
        seen = {s.key for s in frontier}
        while frontier:
            following = []
            for synset in frontier:
                for hyper in self.wordnet.related(synset, HYPERNYM_POINTERS):
                    if hyper.key not in seen:
                        seen.add(hyper.key)
                        following.append(hyper)
            hits = sorted(
                {t for s in following for t in self.owners.get(s.key, ()) if t in allowed and t != record["sumo_term"]}
            )
            if hits:
                return hits
            frontier = following
        return []

    def definition(self, record: dict[str, Any], ancestors: set[str]) -> str:
        """The record's definition with placeholders and truncations repaired."""
        text = record["definition"].strip()
        synsets = self.synsets[record["sumo_term"]]
        gloss = synsets[0].definition if synsets else ""
        if text.startswith(PLACEHOLDER_PREFIX) or not text:
            term = record["sumo_term"]
            if term in self.docs:
                return self.docs[term]
            if gloss:
                return gloss
            sense = self._sense_of_name(term, ancestors)
            return sense.definition if sense else text
        if text.endswith("...") and gloss.startswith(text[:-3]):
            return gloss
        return text

    def _sense_of_name(self, term: str, ancestors: set[str]) -> Synset | None:
        """The WordNet sense of ``term``'s words (``BodyOfWater`` -> body_of_water)
        whose hypernyms reach a synset of one of ``ancestors``, else the most
        frequent sense, else None."""
        if self.wordnet is None:
            return None
        lemma = "_".join(word.lower() for word in _WORDS.findall(term))
        senses = self.wordnet.senses(lemma, "n") or self.wordnet.senses(lemma, "v")
        for sense in senses:
            if any(
                owner in ancestors for hyper in self._hypernym_closure(sense) for owner in self.owners.get(hyper, ())
            ):
                return sense
        return senses[0] if senses else None

    def _hypernym_closure(self, synset: Synset) -> set[tuple[str, int]]:
        assert self.wordnet is not None
        seen: set[tuple[str, int]] = set()
        frontier = [synset]
        while frontier:
            frontier = [h for s in frontier for h in self.wordnet.related(s, HYPERNYM_POINTERS) if h.key not in seen]
            seen.update(h.key for h in frontier)
        return seen

    def concept(self, record: dict[str, Any], parents: list[str], ancestors: set[str]) -> Concept:
        """The pack concept for one layer-file record."""
        synsets = self.synsets[record["sumo_term"]]
        lemmas = tuple(record["lemmas"])
        own = set(lemmas)
        hyponyms = (
            [x for s in synsets for h in self.wordnet.related(s, HYPONYM_POINTERS) for x in h.lemmas]
            if self.wordnet
            else []
        )
        antonyms = [x for s in synsets for x in self.wordnet.antonyms(s)] if self.wordnet else []
        return Concept(
            id=record["sumo_term"],
            layer=record["layer"],
            parents=tuple(parents),
            definition=self.definition(record, ancestors),
            lemmas=lemmas,
            synsets=tuple(record["synsets"]),
            pos=record.get("pos") or "",
            hyponyms=_unique(hyponyms, MAX_HYPONYMS, own),
            examples=_unique([e for s in synsets for e in s.examples], MAX_EXAMPLES),
            antonyms=_unique(antonyms, MAX_ANTONYMS, own),
        )

    def build(self) -> ConceptPack:
        """The validated pack (checksum empty until written)."""
        parents = self.parents()
        graph = nx.DiGraph((p, c) for c, ps in parents.items() for p in ps)
        graph.add_nodes_from(parents)
        concepts = [self.concept(r, parents[r["sumo_term"]], nx.ancestors(graph, r["sumo_term"])) for r in self.records]
        return ConceptPack(PACK_ID, concepts)


def pack_json(pack: ConceptPack) -> str:
    """Serialise ``pack`` as pack.json text: a header, then one concept per line."""
    header = {
        "format": FORMAT_VERSION,
        "id": pack.id,
        "description": "SUMO terms in six abstraction layers, mapped to WordNet 3.0 synsets",
        "sources": list(SOURCES),
    }
    head = json.dumps(header, ensure_ascii=False, sort_keys=True)[:-1]
    lines = [json.dumps(c.to_record(), ensure_ascii=False, sort_keys=True) for c in pack]
    return head + ', "concepts": [\n' + ",\n".join(lines) + "\n]}\n"


def build_pack(sources: Path, out: Path, wordnet: WordNet | None, log: Callable[[str], None] = print) -> ConceptPack:
    """Build the pack from ``sources`` into folder ``out`` and return it as loaded."""
    pack = Builder(sources, wordnet, log).build()
    out.mkdir(parents=True, exist_ok=True)
    (out / PACK_FILE).write_text(pack_json(pack), encoding="utf-8")
    loaded = ConceptPack.load(out)
    log(f"wrote {out / PACK_FILE}: {len(loaded)} concepts, sha256 {loaded.checksum[:12]}")
    return loaded
