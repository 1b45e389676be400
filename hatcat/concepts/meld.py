"""Melds: user-written JSON/YAML files of extra concepts layered over a base pack.

A meld file looks like::

    id: safety-v1
    description: Concepts for monitoring deceptive or evasive behaviour.
    concepts:
      - id: Sycophancy
        parents: [SocialInteraction]
        definition: Telling people what they want to hear ...
        lemmas: [sycophancy]              # optional
        layer: 3                          # optional
        positive_examples: [...]          # optional, sentences that express it
        negative_examples: [...]          # optional, sentences that do not

Id policy: one id names one concept.  A meld concept whose id is new is added
with ``source`` set to the meld's id and, unless it gives ``layer``, one layer
below its deepest parent.  A meld concept whose id already exists in the base
pack *enriches* that concept instead of shadowing it: its parents are added to
the existing ones, a non-empty definition replaces the old one, its lemmas are
appended, its example sentences (if any) replace the old ones, ``source`` becomes the meld's id, and
the base layer is kept.  The merged pack is validated like any pack (parents
must exist in the base pack or the meld, no cycles).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from hatcat.concepts.pack import DEFAULT_PACK_DIR, Concept, ConceptPack, ConceptPackError
from hatcat.paths import sha256_file

_ENTRY_KEYS = frozenset({"id", "parents", "definition", "lemmas", "layer", "positive_examples", "negative_examples"})


@dataclass(frozen=True)
class MeldConcept:
    """One concept as written in a meld file (layer optional until merged)."""

    id: str
    parents: tuple[str, ...]
    definition: str
    lemmas: tuple[str, ...] = ()
    layer: int | None = None
    positive_examples: tuple[str, ...] = ()
    negative_examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class Meld:
    """A parsed meld file; ``checksum`` is the sha256 of its bytes."""

    id: str
    description: str
    concepts: tuple[MeldConcept, ...]
    checksum: str


def load_meld(path: str | Path) -> Meld:
    """Read and check a meld file (``.json``, ``.yaml`` or ``.yml``)."""
    path = Path(path)
    if not path.is_file():
        raise ConceptPackError(f"no meld file at {path}")
    raw = path.read_bytes()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            data = yaml.safe_load(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConceptPackError(f"{path}: cannot parse meld ({exc})") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("concepts"), list):
        raise ConceptPackError(f"{path}: expected a mapping with a 'concepts' list")
    meld_id = data.get("id")
    if not isinstance(meld_id, str) or not meld_id.strip():
        raise ConceptPackError(f"{path}: meld has no 'id'")
    concepts = tuple(_entry(item, f"{path}:") for item in data["concepts"])
    seen: set[str] = set()
    for concept in concepts:
        if concept.id in seen:
            raise ConceptPackError(f"{path}: duplicate concept id {concept.id!r}")
        seen.add(concept.id)
    description = data.get("description", "")
    return Meld(meld_id, str(description), concepts, sha256_file(path))


def _entry(item: Any, where: str) -> MeldConcept:
    """Check one meld entry and turn it into a MeldConcept."""
    if not isinstance(item, Mapping):
        raise ConceptPackError(f"{where} each concept must be a mapping")
    cid = item.get("id")
    if not isinstance(cid, str) or not cid.strip():
        raise ConceptPackError(f"{where} a concept has no valid 'id'")
    where = f"{where} concept {cid!r}:"
    unknown = sorted(set(item) - _ENTRY_KEYS)
    if unknown:
        raise ConceptPackError(f"{where} unknown keys {unknown}")
    parents = _strings(item.get("parents"), f"{where} 'parents'")
    if not parents:
        raise ConceptPackError(f"{where} needs at least one parent")
    definition = item.get("definition", "")
    if not isinstance(definition, str):
        raise ConceptPackError(f"{where} 'definition' must be a string")
    layer = item.get("layer")
    if layer is not None and (not isinstance(layer, int) or isinstance(layer, bool) or layer < 0):
        raise ConceptPackError(f"{where} 'layer' must be a non-negative integer")
    return MeldConcept(
        id=cid,
        parents=parents,
        definition=definition.strip(),
        lemmas=_strings(item.get("lemmas", []), f"{where} 'lemmas'"),
        layer=layer,
        positive_examples=_strings(item.get("positive_examples", []), f"{where} 'positive_examples'"),
        negative_examples=_strings(item.get("negative_examples", []), f"{where} 'negative_examples'"),
    )


def _strings(value: Any, where: str) -> tuple[str, ...]:
    """Check for a list of non-empty strings."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConceptPackError(f"{where} must be a list of non-empty strings")
    return tuple(v.strip() for v in value)


def merge_into(base: ConceptPack, meld: Meld) -> ConceptPack:
    """Apply the id policy of this module and return the validated merged pack."""
    concepts = {c.id: replace(c, children=()) for c in base}
    entries = {entry.id: entry for entry in meld.concepts}
    for entry in meld.concepts:
        missing = [p for p in entry.parents if p not in concepts and p not in entries]
        if missing:
            raise ConceptPackError(f"meld {meld.id!r} concept {entry.id!r} has unknown parent {missing[0]!r}")
    layers: dict[str, int] = {}

    def layer_of(cid: str, visiting: tuple[str, ...]) -> int:
        if cid in base:
            return base[cid].layer
        if cid in visiting:
            raise ConceptPackError(f"cycle in meld {meld.id!r}: {' -> '.join(visiting + (cid,))}")
        if cid not in layers:
            entry = entries[cid]
            deepest = max(layer_of(p, visiting + (cid,)) for p in entry.parents)
            layers[cid] = entry.layer if entry.layer is not None else deepest + 1
        return layers[cid]

    for entry in meld.concepts:
        old = concepts.get(entry.id)
        if old is None:
            concepts[entry.id] = Concept(
                id=entry.id,
                layer=layer_of(entry.id, ()),
                parents=entry.parents,
                definition=entry.definition,
                lemmas=entry.lemmas,
                positive_examples=entry.positive_examples,
                negative_examples=entry.negative_examples,
                source=meld.id,
            )
        else:
            concepts[entry.id] = replace(
                old,
                parents=old.parents + tuple(p for p in entry.parents if p not in old.parents),
                definition=entry.definition or old.definition,
                lemmas=old.lemmas + tuple(x for x in entry.lemmas if x not in old.lemmas),
                positive_examples=entry.positive_examples or old.positive_examples,
                negative_examples=entry.negative_examples or old.negative_examples,
                source=meld.id,
            )
    checksum = hashlib.sha256(f"{base.checksum}+{meld.checksum}".encode()).hexdigest()
    return ConceptPack(f"{base.id}+{meld.id}", concepts.values(), checksum=checksum)


def load_pack(path: str | Path | None = None, melds: Iterable[str | Path] = ()) -> ConceptPack:
    """Load the built pack at ``path`` (default: the shipped SUMO–WordNet pack) and merge ``melds``."""
    pack = ConceptPack.load(DEFAULT_PACK_DIR if path is None else path)
    for meld_path in melds:
        pack = merge_into(pack, load_meld(meld_path))
    return pack
