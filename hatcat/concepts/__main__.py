"""Command line: ``python -m hatcat.concepts build|stats``.

``build --sources DIR --out DIR [--wordnet DIR]`` rebuilds the SUMO–WordNet pack;
``stats [--pack PATH] [--meld FILE ...] [--json]`` summarises a pack.  Bad input
exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from hatcat.concepts.build import build_pack
from hatcat.concepts.meld import load_meld, merge_into
from hatcat.concepts.pack import DEFAULT_PACK_DIR, ConceptPack, ConceptPackError
from hatcat.concepts.wordnet import DEFAULT_DIR as WORDNET_DIR
from hatcat.concepts.wordnet import WordNet


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def stats(pack: ConceptPack) -> dict[str, Any]:
    """Totals per layer, parentless concepts and concepts without a real definition."""
    per_layer: dict[str, int] = {}
    for concept in pack:
        per_layer[str(concept.layer)] = per_layer.get(str(concept.layer), 0) + 1
    orphans = [c.id for c in pack if not c.parents]
    middle = [c for c in pack if 1 <= c.layer <= 4]
    with_parent = sum(1 for c in middle if c.parents)
    sources: dict[str, int] = {}
    for concept in pack:
        sources[concept.source] = sources.get(concept.source, 0) + 1
    return {
        "id": pack.id,
        "checksum": pack.checksum,
        "total": len(pack),
        "per_layer": per_layer,
        "orphans": len(orphans),
        "orphan_ids": orphans,
        "parent_coverage_layers_1_4": round(with_parent / len(middle), 4) if middle else 0.0,
        "placeholder_definitions": sum(1 for c in pack if c.has_placeholder_definition),
        "per_source": sources,
    }


def _print_stats(report: dict[str, Any]) -> None:
    print(f"pack {report['id']}  sha256 {report['checksum'][:12]}")
    print(f"total concepts           {report['total']}")
    for layer, count in report["per_layer"].items():
        print(f"  layer {layer}                {count}")
    print(f"without a parent         {report['orphans']}")
    print(f"layers 1-4 with a parent {report['parent_coverage_layers_1_4']:.1%}")
    print(f"placeholder definitions  {report['placeholder_definitions']}")
    for source, count in report["per_source"].items():
        print(f"  from {source:<18} {count}")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m hatcat.concepts", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    build = commands.add_parser("build", help="build the SUMO–WordNet pack from its sources")
    build.add_argument("--sources", type=Path, required=True, help="folder with layer*.json and *.kif")
    build.add_argument("--out", type=Path, required=True, help="output folder of the pack")
    build.add_argument("--wordnet", type=Path, default=WORDNET_DIR, help="WordNet 3.0 dict folder")
    show = commands.add_parser("stats", help="summarise a pack")
    show.add_argument("--pack", type=Path, default=DEFAULT_PACK_DIR, help="pack folder")
    show.add_argument("--meld", type=Path, action="append", default=[], help="meld file to merge")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    try:
        if args.command == "build":
            if not (args.sources / "layer0.json").is_file():
                parser.error(f"no layer files in {args.sources}")
            if not (args.wordnet / "data.noun").is_file():
                parser.error(f"no WordNet database in {args.wordnet} (apt-get install wordnet-base)")
            started = time.perf_counter()
            build_pack(args.sources, args.out, WordNet(args.wordnet), log=lambda m: print(m, flush=True))
            print(f"built in {time.perf_counter() - started:.1f} s")
        else:
            pack = ConceptPack.load(args.pack)
            for meld in args.meld:
                pack = merge_into(pack, load_meld(meld))
            report = stats(pack)
            if args.json:
                print(json.dumps(report, sort_keys=True))
            else:
                _print_stats(report)
    except (ConceptPackError, OSError) as exc:
        parser.error(str(exc).splitlines()[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
