"""Build the reference corpus (text by others, several registers) into the cache, split dev/test by document.

    python -m hatcat.evidence.reference --sources /path/to/snapshots

`--sources` holds one bare git directory per repository of `hatcat.evidence.sources.SOURCES`, at
`<owner>+<name>/repo` (the search tool's `fetch` lays them out so). Each file is read at its pinned
commit, checked against the sha256 in data/reference_corpus.json (the committed manifest; written on the
first build), parsed into documents and counted in the model's tokens. Within each register, documents
ordered by sha256 of their id go to `dev` until 70% of the register's tokens, the rest to `test`: the
test part is only for the false-firing claims. The corpus itself (`<cache>/reference/corpus.jsonl`,
one `{"id", "register", "split", "tokens", "text"}` per line) stays out of git.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from hatcat.config import Settings
from hatcat.evidence.sources import SOURCES, Source
from hatcat.paths import DATA

MANIFEST = DATA / "reference_corpus.json"
DEV_SHARE = 0.7


def corpus_path(cache_dir: Path) -> Path:
    return Path(cache_dir) / "reference" / "corpus.jsonl"


def read_source(snapshots: Path, source: Source) -> bytes:
    """The file's bytes at its pinned commit, from the snapshot `<snapshots>/<owner>+<name>/repo`."""
    git_dir = snapshots / source.repo.replace("/", "+") / "repo"
    done = subprocess.run(
        ["git", "--git-dir", str(git_dir), "show", f"{source.commit}:{source.path}"], capture_output=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"error: cannot read {source.repo}@{source.commit[:10]}:{source.path} from {git_dir}")
    return done.stdout


def split_documents(docs: list[dict], dev_share: float = DEV_SHARE) -> None:
    """Mark each document `dev` or `test` in place: per register, by sha256 of the id, ~dev_share of tokens to dev."""
    for register in {d["register"] for d in docs}:
        mine = sorted(
            (d for d in docs if d["register"] == register), key=lambda d: hashlib.sha256(d["id"].encode()).digest()
        )
        total, seen = sum(d["tokens"] for d in mine), 0
        for d in mine:
            d["split"] = "dev" if seen < dev_share * total else "test"
            seen += d["tokens"]


def build(snapshots: Path, out: Path, tokenizer, manifest_path: Path = MANIFEST) -> dict:
    """Read, check, parse, count and split every source; write the corpus to `out`; return the manifest."""
    recorded = json.loads(manifest_path.read_text())["sources"] if manifest_path.is_file() else {}
    docs, sources = [], {}
    for source in SOURCES:
        raw = read_source(snapshots, source)
        key = f"{source.repo}:{source.path}"
        digest = hashlib.sha256(raw).hexdigest()
        if key in recorded and recorded[key]["sha256"] != digest:
            raise SystemExit(f"error: {key} does not match the sha256 in {manifest_path}")
        parsed = [(i, t) for i, t in source.parse(key, raw.decode("utf-8")) if t.strip()]
        counts = [len(ids) for ids in tokenizer([t for _, t in parsed], add_special_tokens=False)["input_ids"]]
        docs += [{"id": i, "register": source.register, "tokens": n, "text": t} for (i, t), n in zip(parsed, counts)]
        sources[key] = {
            "register": source.register,
            "commit": source.commit,
            "sha256": digest,
            "licence": source.licence,
            "documents": len(parsed),
            "tokens": sum(counts),
        }
    split_documents(docs)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as handle:
        for d in docs:
            handle.write(json.dumps({k: d[k] for k in ("id", "register", "split", "tokens", "text")}) + "\n")
    totals: dict[str, dict[str, int]] = {}
    for d in docs:
        totals.setdefault(d["register"], {"dev": 0, "test": 0})[d["split"]] += d["tokens"]
    manifest = {
        "tokenizer": "gemma-3-270m",
        "dev_share": DEV_SHARE,
        "tokens": sum(d["tokens"] for d in docs),
        "per_register": totals,
        "sources": sources,
    }
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_corpus(cache_dir: Path) -> list[dict]:
    """The built corpus's documents (exit 2 with how to build it when it is missing)."""
    path = corpus_path(cache_dir)
    if not path.is_file():
        print(
            f"error: no reference corpus at {path}; build it: python -m hatcat.evidence.reference --sources DIR",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return [json.loads(line) for line in path.open()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hatcat.evidence.reference", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=Path, required=True, help="folder of <owner>+<name>/repo git snapshots")
    args = parser.parse_args(argv)
    if not args.sources.is_dir():
        print(f"error: --sources {args.sources} is not a folder", file=sys.stderr)
        return 2
    from hatcat.model import load_model

    settings = Settings.from_env()
    tokenizer = load_model(settings.model_name, "cpu", "float32", settings.cache_dir, settings.hf_offline).tokenizer
    manifest = build(args.sources, corpus_path(settings.cache_dir), tokenizer)
    print(json.dumps({"tokens": manifest["tokens"], "per_register": manifest["per_register"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
