"""The concept pack: validated concepts plus a networkx graph of their hierarchy.

A built pack is a folder holding one ``pack.json``::

    {"format": 1, "id": "sumo-wordnet-v1", "description": "...", "sources": [...],
     "concepts": [{"id": ..., "layer": ..., "parents": [...], ...}, ...]}

Concepts are stored one per line, sorted by (layer, id).  Children are not
stored: they are derived from the parents when the pack is loaded.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import networkx as nx

from hatcat.errors import HatCatError
from hatcat.paths import SHIPPED_PACK, sha256_file

PACK_FILE = "pack.json"
FORMAT_VERSION = 1
PLACEHOLDER_PREFIX = "SUMO category: "
DEFAULT_PACK_DIR = SHIPPED_PACK

# Fields stored per concept in pack.json, in addition to id, layer and parents.
_TEXT_FIELDS = ("definition", "pos", "source")
_LIST_FIELDS = (
    "lemmas",
    "synsets",
    "hyponyms",
    "examples",
    "antonyms",
    "positive_examples",
    "negative_examples",
)


class ConceptPackError(HatCatError, ValueError):
    """A concept pack or meld is missing, malformed or inconsistent."""

    code = "invalid_concept_pack"


@dataclass(frozen=True)
class Concept:
    """One concept of a pack: a SUMO term (or a meld concept) and what describes it.

    ``lemmas``, ``hyponyms`` and ``antonyms`` keep WordNet's spelling
    (underscores for spaces).  ``positive_examples``/``negative_examples`` are
    filled for meld concepts; ``source`` is ``"base"`` or the meld's name.
    """

    id: str
    layer: int
    parents: tuple[str, ...] = ()
    children: tuple[str, ...] = ()
    definition: str = ""
    lemmas: tuple[str, ...] = ()
    synsets: tuple[str, ...] = ()
    pos: str = ""
    hyponyms: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()
    antonyms: tuple[str, ...] = ()
    positive_examples: tuple[str, ...] = ()
    negative_examples: tuple[str, ...] = ()
    source: str = "base"

    @property
    def has_placeholder_definition(self) -> bool:
        """True when the definition is missing or only a "SUMO category: X" stub."""
        return not self.definition or self.definition.startswith(PLACEHOLDER_PREFIX)

    def to_record(self) -> dict[str, Any]:
        """The JSON record stored in pack.json (empty optional fields left out)."""
        record: dict[str, Any] = {"id": self.id, "layer": self.layer, "parents": list(self.parents)}
        for name in _TEXT_FIELDS + _LIST_FIELDS:
            value = getattr(self, name)
            if value and not (name == "source" and value == "base"):
                record[name] = list(value) if isinstance(value, tuple) else value
        return record


def concept_from_record(record: Any, where: str) -> Concept:
    """Build a Concept from a pack.json record, naming ``where`` in any error."""
    if not isinstance(record, Mapping):
        raise ConceptPackError(f"{where}: a concept must be an object, got {type(record).__name__}")
    cid = record.get("id")
    if not isinstance(cid, str) or not cid.strip():
        raise ConceptPackError(f"{where}: concept has no valid 'id'")
    where = f"{where} concept {cid!r}"
    layer = record.get("layer")
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
        raise ConceptPackError(f"{where}: 'layer' must be a non-negative integer")
    fields: dict[str, Any] = {"parents": _strings(record.get("parents", []), f"{where} 'parents'")}
    for name in _TEXT_FIELDS:
        value = record.get(name, "base" if name == "source" else "")
        if not isinstance(value, str):
            raise ConceptPackError(f"{where}: {name!r} must be a string")
        fields[name] = value
    for name in _LIST_FIELDS:
        fields[name] = _strings(record.get(name, []), f"{where} {name!r}")
    return Concept(id=cid, layer=layer, **fields)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    """Check that ``value`` is a list of strings and return it as a tuple."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConceptPackError(f"{where} must be a list of strings")
    return tuple(value)


class ConceptPack:
    """A validated set of concepts with their hierarchy as a ``networkx.DiGraph``.

    Edges run parent -> child.  Iteration, ``ids`` and every list this class
    returns follow the pack order: (layer, id).  Graph queries return ids.
    """

    def __init__(self, pack_id: str, concepts: Iterable[Concept], checksum: str = "") -> None:
        """Validate ``concepts`` (unique ids, known parents, no cycle) and index them."""
        by_id: dict[str, Concept] = {}
        for concept in concepts:
            if concept.id in by_id:
                raise ConceptPackError(f"duplicate concept id {concept.id!r}")
            by_id[concept.id] = concept
        graph = nx.DiGraph()
        graph.add_nodes_from(by_id)
        for concept in by_id.values():
            for parent in concept.parents:
                if parent not in by_id:
                    raise ConceptPackError(f"concept {concept.id!r} has unknown parent {parent!r}")
                if parent == concept.id:
                    raise ConceptPackError(f"concept {concept.id!r} is its own parent")
                graph.add_edge(parent, concept.id)
        try:
            cycle = nx.find_cycle(graph)
        except nx.NetworkXNoCycle:
            cycle = []
        if cycle:
            path = " -> ".join([edge[0] for edge in cycle] + [cycle[0][0]])
            raise ConceptPackError(f"cycle in concept hierarchy: {path}")

        self.id = pack_id
        self.checksum = checksum
        self.graph = graph
        self.ids = sorted(by_id, key=lambda cid: (by_id[cid].layer, cid))
        self._order = {cid: i for i, cid in enumerate(self.ids)}
        self._concepts = {
            cid: replace(by_id[cid], children=tuple(self._sorted(graph.successors(cid)))) for cid in self.ids
        }

    @classmethod
    def load(cls, path: str | Path) -> ConceptPack:
        """Load and validate the built pack in folder ``path`` (or its pack.json)."""
        path = Path(path)
        file = path / PACK_FILE if path.is_dir() else path
        if not file.is_file():
            raise ConceptPackError(f"no concept pack at {path} (expected {PACK_FILE})")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConceptPackError(f"{file}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("concepts"), list):
            raise ConceptPackError(f"{file}: expected an object with a 'concepts' list")
        if data.get("format") != FORMAT_VERSION:
            raise ConceptPackError(f"{file}: unsupported format {data.get('format')!r}")
        pack_id = data.get("id")
        if not isinstance(pack_id, str) or not pack_id:
            raise ConceptPackError(f"{file}: missing pack 'id'")
        concepts = [concept_from_record(r, f"{file}:") for r in data["concepts"]]
        return cls(pack_id, concepts, checksum=sha256_file(file))

    def _sorted(self, ids: Iterable[str]) -> list[str]:
        return sorted(ids, key=self._order.__getitem__)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, cid: object) -> bool:
        return cid in self._concepts

    def __getitem__(self, cid: str) -> Concept:
        try:
            return self._concepts[cid]
        except KeyError:
            raise KeyError(f"no concept {cid!r} in pack {self.id!r}") from None

    def __iter__(self) -> Iterator[Concept]:
        return (self._concepts[cid] for cid in self.ids)

    def __repr__(self) -> str:
        return f"ConceptPack(id={self.id!r}, concepts={len(self)})"

    def parents(self, cid: str) -> list[str]:
        """Ids of the direct parents of ``cid``."""
        return self._sorted(self[cid].parents)

    def children(self, cid: str) -> list[str]:
        """Ids of the direct children of ``cid``."""
        return list(self[cid].children)

    def siblings(self, cid: str) -> list[str]:
        """Ids of the other children of ``cid``'s parents."""
        found = {child for parent in self[cid].parents for child in self._concepts[parent].children}
        found.discard(cid)
        return self._sorted(found)

    def ancestors(self, cid: str) -> list[str]:
        """The shortest path from ``cid`` up to a root, nearest first (``cid`` excluded).

        Ties between equally short paths go to the parent earlier in pack order.
        """
        came_from: dict[str, str] = {}
        queue = deque([cid])
        seen = {cid}
        while queue:
            node = queue.popleft()
            parents = self.parents(node)
            if not parents:
                path = []
                while node != cid:
                    path.append(node)
                    node = came_from[node]
                return path[::-1]
            for parent in parents:
                if parent not in seen:
                    seen.add(parent)
                    came_from[parent] = node
                    queue.append(parent)
        return []

    def layer(self, n: int) -> list[Concept]:
        """Concepts of abstraction layer ``n``."""
        return [c for c in self if c.layer == n]

    def search(self, text: str) -> list[Concept]:
        """Concepts whose id or a lemma matches ``text`` (case-insensitive).

        Exact id or lemma matches come first, then substring matches; spaces
        and underscores are treated alike.
        """
        query = _normal(text)
        if not query:
            return []
        exact: list[Concept] = []
        partial: list[Concept] = []
        for concept in self:
            names = [_normal(concept.id), *(_normal(lemma) for lemma in concept.lemmas)]
            if query in names:
                exact.append(concept)
            elif any(query in name for name in names):
                partial.append(concept)
        return exact + partial


def _normal(text: str) -> str:
    return text.strip().lower().replace("_", " ")
