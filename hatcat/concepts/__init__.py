"""SUMO–WordNet concept packs: loading, graph queries, melds and the pack builder.

``load_pack()`` returns the shipped pack (``data/concept_packs/sumo-wordnet-v1``);
``python -m hatcat.concepts build|stats`` rebuilds it or summarises a pack.  The
id policy for melds is described in :mod:`hatcat.concepts.meld`.
"""

from hatcat.concepts.meld import Meld, MeldConcept, load_meld, load_pack, merge_into
from hatcat.concepts.pack import DEFAULT_PACK_DIR, Concept, ConceptPack, ConceptPackError

__all__ = [
    "DEFAULT_PACK_DIR",
    "Concept",
    "ConceptPack",
    "ConceptPackError",
    "Meld",
    "MeldConcept",
    "load_meld",
    "load_pack",
    "merge_into",
]
