"""Read the taxonomy and English documentation out of SUMO's ``.kif`` files.

Only flat top-level axioms matter to the concept pack:

* ``(subclass A B)``, ``(subAttribute A B)``, ``(subrelation A B)`` and
  ``(instance A B)`` make ``B`` a direct super-term of ``A``;
* ``(documentation A EnglishLanguage "text")`` documents ``A``.

Rules, comments and nested forms are skipped.  This module is used at pack
build time only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

SUPER_RELATIONS = frozenset({"subclass", "subAttribute", "subrelation", "instance"})

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|;[^\n]*|\(|\)|[^\s();"]+')
_TERM_LINK = re.compile(r"&%(\w+)")
_SPACE = re.compile(r"\s+")


@dataclass
class KifFacts:
    """Direct super-terms and English documentation gathered from KIF files."""

    supers: dict[str, list[str]] = field(default_factory=dict)
    docs: dict[str, str] = field(default_factory=dict)


def top_level_forms(text: str) -> Iterable[list[str]]:
    """Yield the atoms of every flat top-level form ``(a b c ...)`` in ``text``.

    Forms that contain nested lists are skipped; string atoms keep their quotes.
    """
    depth = 0
    form: list[str] = []
    flat = True
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token[0] == ";":
            continue
        if token == "(":
            depth += 1
            if depth == 1:
                form, flat = [], True
            else:
                flat = False
        elif token == ")":
            depth -= 1
            if depth == 0 and flat and form:
                yield form
            depth = max(depth, 0)
        elif depth == 1:
            form.append(token)


def clean_documentation(raw: str) -> str:
    """Turn a quoted KIF documentation string into one line of plain text."""
    text = raw[1:-1].replace('\\"', '"')
    text = _TERM_LINK.sub(r"\1", text)
    return _SPACE.sub(" ", text).strip()


def read_kif(paths: Iterable[Path]) -> KifFacts:
    """Collect super-terms and documentation from ``paths`` (read in the given order).

    The first English documentation seen for a term wins; super-terms are
    de-duplicated in order of appearance.
    """
    facts = KifFacts()
    for path in paths:
        text = path.read_text(encoding="utf-8", errors="replace")
        for form in top_level_forms(text):
            head = form[0]
            if head in SUPER_RELATIONS and len(form) == 3:
                sub, sup = form[1], form[2]
                if sub == sup or sup.startswith('"') or sub.startswith("?"):
                    continue
                known = facts.supers.setdefault(sub, [])
                if sup not in known:
                    known.append(sup)
            elif (
                head == "documentation" and len(form) == 4 and form[2] == "EnglishLanguage" and form[3].startswith('"')
            ):
                facts.docs.setdefault(form[1], clean_documentation(form[3]))
    return facts


def nearest_in(term: str, supers: dict[str, list[str]], wanted: set[str] | frozenset[str]) -> list[str]:
    """Return the super-terms of ``term`` in ``wanted`` at the smallest distance.

    Breadth-first over the KIF super-term graph; the result is sorted and is
    empty when no ancestor of ``term`` is in ``wanted``.
    """
    seen = {term}
    frontier = [term]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for sup in supers.get(node, ()):
                if sup not in seen:
                    seen.add(sup)
                    following.append(sup)
        hits = sorted(t for t in following if t in wanted)
        if hits:
            return hits
        frontier = following
    return []
