"""The signal-validity recipe's data: which texts teach each concept, and the control corpus.

Per concept a few texts (`training_texts`): its definition sentences first (they say what the
concept is), then example sentences, then lemma-in-context templates; optionally the model's own
continuation of a prompt about the concept (`continuation_prompt`), re-encoded without the
prompt. Negatives are every token of the control corpus (ordinary text) and the texts of the
concept's siblings/cousins and of distant concepts (hatcat/training/prompts.negatives).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from hatcat.concepts import Concept, ConceptPack
from hatcat.training.prompts import concept_prompts, words

DATA = Path(__file__).resolve().parents[2] / "data"
CONTROL_FILE = DATA / "signal" / "control.yaml"


def training_texts(concept: Concept, k: int = 4) -> list[str]:
    """Up to k training-split positives, one of each kind before a second of any: the definition, example sentences,
    category relations ("X is a kind of Y"), lemma-in-context templates, the definition reworded."""
    examples = set(concept.examples) | set(concept.positive_examples)

    def rank(text: str) -> int:
        if text in examples:
            return 1
        if " kind of " in text or text.startswith(("One type of", "An example of")):
            return 2
        if text.startswith('The word "'):
            return 4
        return 0 if ": " in text else 3

    texts = [p.text for p in concept_prompts(concept) if p.split == "train" and p.positive]
    seen: dict[int, int] = {}
    order = []  # one text of each kind before a second of any
    for text in sorted(texts, key=rank):
        seen[rank(text)] = seen.get(rank(text), 0) + 1
        order.append((seen[rank(text)], rank(text), text))
    return [text for *_, text in sorted(order)[:k]]


def continuation_prompt(concept: Concept) -> str:
    """A prompt the model continues with text about the concept (the prompt itself is not kept)."""
    name = words(concept.lemmas[0]) if concept.lemmas else words(concept.id)
    definition = (
        concept.definition.rstrip(". ") if concept.definition and not concept.has_placeholder_definition else ""
    )
    return f"The following passage is about {name}{f' ({definition})' if definition else ''}.\n\n"


def control_texts(split: str) -> list[str]:
    """The control corpus's texts of one split (`dev`: threshold setting, `test`: held-out check)."""
    return [row["text"] for row in yaml.safe_load(CONTROL_FILE.read_text())[split]]


def control_sources(split: str) -> list[str]:
    """The source (chatterbot-corpus, a fortune file) of each of `control_texts(split)`."""
    return [row["source"] for row in yaml.safe_load(CONTROL_FILE.read_text())[split]]


def pack_concepts(pack: ConceptPack, ids: list[str]) -> list[Concept]:
    return [pack[c] for c in ids]
