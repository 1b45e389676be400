"""CLI: train activation probes and words-only detectors for concepts and write a probe pack.

python -m hatcat.train --layers 0 1 2 3 4 --train-text-probes
python -m hatcat.train --concepts Anger Fear --limit 5 --out /tmp/pack
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hatcat.concepts import load_pack
from hatcat.config import Settings
from hatcat.errors import HatCatError
from hatcat.model import load_model
from hatcat.paths import SAFETY_MELD
from hatcat.probes import default_folder
from hatcat.training.run import TrainSettings, select_concepts, train
from hatcat.training.signal import METHODS

DEFAULT_MELDS = [str(SAFETY_MELD)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = TrainSettings()
    ap = argparse.ArgumentParser(prog="python -m hatcat.train", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=list(defaults.layers),
        help="concept-pack layers (0-5) to train (default: 0 1 2 3 4)",
    )
    ap.add_argument(
        "--train-text-probes",
        action="store_true",
        help="accepted for compatibility: the words-only side is always trained, every pack needs it for divergence",
    )
    ap.add_argument(
        "--concepts", nargs="+", default=[], metavar="ID", help="train only these concept ids (overrides --layers)"
    )
    ap.add_argument(
        "--concept-pack",
        default=None,
        metavar="PATH",
        help="concept pack folder (default: the shipped data/concept_packs/sumo-wordnet-v1)",
    )
    ap.add_argument(
        "--meld",
        nargs="*",
        default=DEFAULT_MELDS,
        metavar="PATH",
        help="custom concept packs merged over the base (default: the safety meld); give --meld alone for none",
    )
    ap.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="model to probe (default: HATCAT_MODEL_NAME, else the embedded Gemma 3 270M)",
    )
    ap.add_argument("--limit", type=int, default=None, metavar="N", help="train at most N concepts (quick runs)")
    ap.add_argument(
        "--tap-layer",
        type=int,
        default=defaults.tap_layer,
        help=f"decoder block whose output is probed (default {defaults.tap_layer}, from the sweep in results/tap_sweep.json)",
    )
    ap.add_argument(
        "--pooling",
        choices=("last", "mean", "all"),
        default=defaults.pooling,
        help=f"how a training text's token states become rows (default {defaults.pooling}; all: every token)",
    )
    ap.add_argument(
        "--method",
        choices=METHODS,
        default=defaults.method,
        help=f"probe directions (default {defaults.method}, chosen on dev data, see the README)",
    )
    ap.add_argument(
        "--k-texts", type=int, default=defaults.k_texts, help=f"training texts per concept (default {defaults.k_texts})"
    )
    ap.add_argument(
        "--target-fpr",
        type=float,
        default=defaults.target_fpr,
        help=f"each threshold's false-positive rate on control-corpus tokens (default {defaults.target_fpr})",
    )
    ap.add_argument(
        "--directions-from",
        default=None,
        metavar="PACK",
        help="keep this pack's activation directions and only recalibrate them (control corpus, divergence)",
    )
    ap.add_argument("--batch-size", type=int, default=defaults.batch_size, help="texts per forward pass")
    ap.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="probe pack folder (default: <HATCAT_PROBES_DIR>/<model>/<concept-pack>)",
    )
    ap.add_argument("--report", default=None, metavar="FILE", help="also write the run's timings as JSON here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings.from_env()
        pack = load_pack(args.concept_pack, melds=args.meld)
        run = TrainSettings(
            layers=tuple(args.layers),
            concepts=tuple(args.concepts),
            limit=args.limit,
            tap_layer=args.tap_layer,
            pooling=args.pooling,
            method=args.method,
            k_texts=args.k_texts,
            target_fpr=args.target_fpr,
            directions_from=args.directions_from,
            batch_size=args.batch_size,
        )
        select_concepts(pack, run)  # refuse unknown ids before the model loads
        model = args.model or settings.model_name
        out = Path(args.out) if args.out else default_folder(settings.probes_dir, model, pack.id)
        loaded = load_model(model, settings.device, settings.dtype, settings.cache_dir, settings.hf_offline)
        folder, report = train(loaded, pack, run, settings.cache_dir, out)
    except HatCatError as err:
        print(f"hatcat.train: {err}", file=sys.stderr)
        return 2
    summary = {"pack": str(folder), **report.__dict__}
    if args.report:
        Path(args.report).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
