"""A small reader for the WordNet 3.0 database files (``data.*`` / ``index.*``).

Synsets are addressed by their conventional names (``anger.n.01``): the first
lemma in lower case, the part of speech, and the rank of the synset among that
lemma's senses in ``index.<pos>``.  Adjective satellites (``s``) are ranked
among that lemma's satellite senses only, which is how the SUMO–WordNet layer
files name them.  Used at pack build time only (the Debian
package ``wordnet-base`` installs the files under ``/usr/share/wordnet``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = Path("/usr/share/wordnet")
FILE_POS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}

_EXAMPLE = re.compile(r'"([^"]+)"')
_SYNTAX_MARKER = re.compile(r"\([a-z]+\)$")


@dataclass(frozen=True)
class Pointer:
    """One pointer of a synset: ``symbol`` to synset ``target``.

    ``source``/``target_word`` are 1-based word numbers, 0 for a semantic pointer.
    """

    symbol: str
    target: tuple[str, int]
    source: int
    target_word: int


@dataclass(frozen=True)
class Synset:
    """A WordNet synset as stored in a data file."""

    key: tuple[str, int]
    pos: str
    lemmas: tuple[str, ...]
    pointers: tuple[Pointer, ...]
    gloss: str

    @property
    def definition(self) -> str:
        """The gloss without its example sentences."""
        return self.gloss.split('; "')[0].strip().rstrip(";").strip()

    @property
    def examples(self) -> tuple[str, ...]:
        """The quoted example sentences of the gloss."""
        return tuple(m.strip() for m in _EXAMPLE.findall(self.gloss) if m.strip())


class WordNet:
    """Synset lookup by name plus the pointer relations the pack builder needs."""

    def __init__(self, directory: Path = DEFAULT_DIR) -> None:
        self._synsets: dict[tuple[str, int], Synset] = {}
        self._names: dict[str, tuple[str, int]] = {}
        self._senses: dict[tuple[str, str], list[tuple[str, int]]] = {}
        for suffix, pos in FILE_POS.items():
            self._read_data(directory / f"data.{suffix}", pos)
        for suffix, pos in FILE_POS.items():
            self._read_index(directory / f"index.{suffix}", pos)

    def _read_data(self, path: Path, file_pos: str) -> None:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line or line.startswith(" "):
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            offset, pos = int(fields[0]), fields[2]
            n_words = int(fields[3], 16)
            words = fields[4 : 4 + 2 * n_words : 2]
            lemmas = tuple(_SYNTAX_MARKER.sub("", w) for w in words)
            at = 4 + 2 * n_words
            n_pointers = int(fields[at])
            pointers = []
            for i in range(at + 1, at + 1 + 4 * n_pointers, 4):
                symbol, target, target_pos, words_hex = fields[i : i + 4]
                pointers.append(
                    Pointer(
                        symbol=symbol,
                        target=(_file_pos(target_pos), int(target)),
                        source=int(words_hex[:2], 16),
                        target_word=int(words_hex[2:4], 16),
                    )
                )
            key = (file_pos, offset)
            self._synsets[key] = Synset(key, pos, lemmas, tuple(pointers), gloss.strip())

    def _read_index(self, path: Path, file_pos: str) -> None:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line or line.startswith(" "):
                continue
            fields = line.split()
            lemma, n_synsets = fields[0], int(fields[2])
            satellite_rank = 0
            keys = [(file_pos, int(offset)) for offset in fields[-n_synsets:]]
            self._senses[(lemma, file_pos)] = keys
            for rank, key in enumerate(keys, start=1):
                synset = self._synsets[key]
                satellite_rank += synset.pos == "s"
                number = satellite_rank if synset.pos == "s" else rank
                if synset.lemmas[0].lower() == lemma:
                    self._names[f"{lemma}.{synset.pos}.{number:02d}"] = synset.key

    def synset(self, name: str) -> Synset | None:
        """The synset called ``name`` (e.g. ``anger.n.01``), or None."""
        key = self._names.get(name)
        return self._synsets[key] if key else None

    def senses(self, lemma: str, pos: str) -> list[Synset]:
        """Synsets of ``lemma`` (lower case, underscores for spaces) for ``pos`` in
        n/v/a/r, most frequent sense first."""
        return [self._synsets[key] for key in self._senses.get((lemma, pos), ())]

    def related(self, synset: Synset, symbols: frozenset[str]) -> list[Synset]:
        """Synsets reached from ``synset`` by pointers whose symbol is in ``symbols``."""
        return [self._synsets[p.target] for p in synset.pointers if p.symbol in symbols]

    def antonyms(self, synset: Synset) -> list[str]:
        """Lemmas that WordNet lists as antonyms of the lemmas of ``synset``."""
        found = []
        for p in synset.pointers:
            if p.symbol != "!":
                continue
            target = self._synsets[p.target]
            if p.target_word:
                found.append(target.lemmas[p.target_word - 1])
            else:
                found.extend(target.lemmas)
        return found


def _file_pos(pos: str) -> str:
    """The data file a pointer's part of speech lives in (satellites are adjectives)."""
    return "a" if pos == "s" else pos
