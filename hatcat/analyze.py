"""Analyse the texts of a JSONL file into a Parquet table (the CLI over `Engine.analyze`):

    python -m hatcat.analyze texts.jsonl --out scores.parquet [--top-k 10] [--concepts Fear,Music]

Each JSONL line is a JSON string or an object with a `text` field (an `id` field is carried
through); each row holds the text's summary and per-concept statistics (`hatcat.analysis`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hatcat.config import Settings
from hatcat.engine import Engine
from hatcat.errors import HatCatError, InvalidValue
from hatcat.pipeline import ANALYZE_BATCH


def read_jsonl(path: Path) -> tuple[list[str], list[Any]]:
    """Texts and ids (the line number where a line has no `id`) from a JSONL file."""
    texts, ids = [], []
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise InvalidValue(f"cannot read {path}: {err.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            raise InvalidValue(f"{path}:{number}: not JSON") from None
        text = value.get("text") if isinstance(value, dict) else value
        if not isinstance(text, str) or not text:
            raise InvalidValue(f"{path}:{number}: expected a non-empty string or an object with a `text` string")
        texts.append(text)
        ids.append(value.get("id", number) if isinstance(value, dict) else number)
    if not texts:
        raise InvalidValue(f"{path} holds no texts")
    return texts, ids


def parquet_row(identifier: Any, text: str, document: dict[str, Any]) -> dict[str, Any]:
    """One Parquet row: the text, its per-token maxima and top concepts, the summary, the concept stats."""
    summary = document["summary"]
    return {
        "id": str(identifier),
        "text": text,
        "n_tokens": document["n_tokens"],
        "tokens": [r.token for r in document["records"]],
        "token_max_divergence": [r.max_divergence for r in document["records"]],
        "token_top_concepts": [[c.concept for c in r.concepts[:5]] for r in document["records"]],
        "mean_divergence": summary["mean_divergence"],
        "max_divergence": summary["max_divergence"],
        "top_concepts": [c["concept"] for c in summary["top_concepts"]],
        "concepts": document["concepts"],
        "summary_line": document["summary_line"],
    }


def main(argv: list[str] | None = None) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    parser = argparse.ArgumentParser(prog="python -m hatcat.analyze", description=__doc__.split("\n\n")[0])
    parser.add_argument("jsonl", type=Path, help="one text per line: a JSON string or {'text': ..., 'id': ...}")
    parser.add_argument("--out", type=Path, required=True, help="Parquet file to write")
    parser.add_argument("--top-k", type=int, default=10, help="concepts summarised per text (by max divergence)")
    parser.add_argument("--concepts", default="", help="comma-separated concepts to summarise instead of the top k")
    parser.add_argument("--batch-size", type=int, default=ANALYZE_BATCH, help="texts per padded forward")
    args = parser.parse_args(argv)
    try:
        if args.top_k < 1 or args.batch_size < 1:
            raise InvalidValue("--top-k and --batch-size must be >= 1")
        texts, ids = read_jsonl(args.jsonl)
        engine = Engine.from_settings(Settings.from_env())
        concepts = [c.strip() for c in args.concepts.split(",") if c.strip()] or None
        documents = engine.analyze(texts, concepts, args.top_k, args.batch_size)  # checks the request first
        rows: list[dict[str, Any] | None] = [None] * len(texts)
        with tqdm(total=len(texts), unit="text", desc="analysing") as bar:
            for i, document in documents:
                rows[i] = parquet_row(ids[i], texts[i], document)
                bar.update(1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), args.out)
    except HatCatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(texts)} analyses to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
