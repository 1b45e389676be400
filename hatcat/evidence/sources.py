"""The reference corpus's sources: openly licensed text by others, each pinned to a repository commit.

Every source is a file in a public git repository (read from a local snapshot, `<dir>/<owner>+<name>/repo`,
as a bare git directory) with its register, licence and the parser that turns it into documents
`(document id, text)`. data/NOTICE names them with their licences.
"""

from __future__ import annotations

import html
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Documents = Iterator[tuple[str, str]]


@dataclass(frozen=True)
class Source:
    """One file of one repository at one commit, and how it becomes documents."""

    register: str  # fiction | encyclopedic | dialogue | forum
    repo: str  # owner/name
    commit: str
    path: str
    licence: str
    parse: Callable[[str, str], Documents]  # (source key, file text) -> documents


def gutenberg(key: str, text: str) -> Documents:
    """A Project Gutenberg book without its licence header and footer: one document."""
    start = re.search(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG[^\n]*\n", text)
    end = re.search(r"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG", text)
    body = text[start.end() if start else 0 : end.start() if end else len(text)]
    yield key, re.sub(r"[ \t]*\n[ \t]*(?!\n)", " ", body).strip()  # rejoin wrapped lines, keep paragraphs


_WIKI_FIXES = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" 's", "'s"), (" n't", "n't"), ("( ", "("), (" )", ")"))


def wikitext(key: str, text: str) -> Documents:
    """WikiText-2 (word level): one document per article, tokenisation undone, sentences with `<unk>` dropped."""
    for part in re.split(r"\n \n (?== [^=])", text.lstrip("\ufeff")):
        title = re.match(r"\s*= ([^=]+) =", part)
        if not title:
            continue
        lines = []
        for line in part.splitlines()[1:]:
            line = line.strip()
            if not line or line.startswith("="):
                continue
            sentences = [s for s in re.split(r"(?<= \.) ", line) if "<unk>" not in s]
            line = " ".join(sentences)
            for old, new in _WIKI_FIXES:
                line = line.replace(old, new)
            line = re.sub(r" ([,.;:!?'])", r"\1", line).replace('" ', '"', 1)
            lines.append(line)
        if lines:
            yield f"{key}#{title.group(1).strip()}", "\n".join(lines)


def sgd(key: str, text: str) -> Documents:
    """Schema-Guided Dialogue: one document per dialogue, a speaker label before each turn."""
    for dialogue in json.loads(text):
        turns = [f"{t['speaker'].title()}: {t['utterance']}" for t in dialogue["turns"]]
        yield f"{key}#{dialogue['dialogue_id']}", "\n".join(turns)


def _plain(body: str) -> str:
    body = re.sub(r"<pre>.*?</pre>", " ", body, flags=re.DOTALL)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body))).strip()


def stackexchange(key: str, text: str) -> Documents:
    """A Stack Exchange `Posts.xml`: one document per question with its answers."""
    threads: dict[str, list[str]] = {}
    for row in ET.fromstring(text.lstrip("\ufeff")).iter("row"):
        kind, body = row.get("PostTypeId"), _plain(row.get("Body", ""))
        if kind == "1":
            threads.setdefault(row.get("Id"), []).insert(0, f"{row.get('Title', '')}\n{body}")
        elif kind == "2" and body:
            threads.setdefault(row.get("ParentId"), []).append(body)
    for post, parts in threads.items():
        if len(parts) > 1 or parts[0].count(" ") > 20:
            yield f"{key}#{post}", "\n\n".join(parts)


PD = "public domain in the USA (Project Gutenberg)"
BY_SA3 = "CC BY-SA 3.0"
SOURCES = (
    *(
        Source("fiction", f"gutenbergbooks/{n}", commit, f"{n}-0.txt", PD, gutenberg)
        for n, commit in (
            (1342, "041e520899f9a02af517d6cb253bc1fdfbf923e2"),  # Austen, Pride and Prejudice
            (2701, "a002fe509562e55a6fc4bab6765360f97e47a227"),  # Melville, Moby-Dick
            (84, "8bd92d5ea00b020a3b1224f3558019e5b4024f94"),  # Shelley, Frankenstein
            (1661, "4583fe51c670727bf1edf51b41e7b67b7736224a"),  # Doyle, The Adventures of Sherlock Holmes
            (11, "5e5120e12a58a10254e0e6a42661d887e61c2aac"),  # Carroll, Alice's Adventures in Wonderland
            (174, "c8192e557036348b5b5d8d6346c6af5cb8a6195c"),  # Wilde, The Picture of Dorian Gray
        )
    ),
    *(
        Source(
            "encyclopedic",
            "DiMarzioBian/Neural-Probabilistic-Language-Model-NIPS-2000",
            "522b6ae78c58fe27e95ea18cc99704ddbaab030b",
            f"data/wikitext-2/{part}.txt",
            f"{BY_SA3} (WikiText-2, Wikipedia articles)",
            wikitext,
        )
        for part in ("valid", "test")
    ),
    *(
        Source(
            "dialogue",
            "google-research-datasets/dstc8-schema-guided-dialogue",
            "e852981ae34990f4358979625854259302feaa78",
            f"train/dialogues_{i:03d}.json",
            "CC BY-SA 4.0",
            sgd,
        )
        for i in range(1, 31)
    ),
    *(
        Source("forum", repo, commit, "Posts.xml", f"{BY_SA3} (Stack Exchange)", stackexchange)
        for repo, commit in (
            ("kevswanberg/beer_tentrr", "9573647bff33c61bdce2f07a9000a4098fd3074d"),  # beer.stackexchange.com
            ("Yoav-Shafir/Elasticsearch-Coffee-Search-Engine-JS", "97e93c92aaa379fed6d0ee9be94b2024371d6aba"),  # coffee
            (
                "ArleneDcosta/StackExchangePatternandPrediction",
                "bc4f1822a63cf2aa9ae945837cda520c176c6dc3",
            ),  # data science
        )
    ),
)
