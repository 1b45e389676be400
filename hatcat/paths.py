"""Where HatCat's files live, how a model id becomes a folder name, and how files are fingerprinted.

The shipped data sits beside the code; the probe root can be moved with `HATCAT_PROBES_DIR`
(`Settings.probes_dir`), caches with `HATCAT_CACHE_DIR`.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
CONCEPT_PACKS = DATA / "concept_packs"
SHIPPED_PACK = CONCEPT_PACKS / "sumo-wordnet-v1"
SAFETY_MELD = CONCEPT_PACKS / "safety-v1.yaml"
PROBES = ROOT / "probes"  # HATCAT_PROBES_DIR
SHIPPED_PROBES = PROBES / "gemma-3-270m" / "sumo-wordnet-v1+safety-v1"  # the embedded model's shipped pack
RESULTS = ROOT / "results"
CACHE = Path.home() / ".cache" / "hatcat"  # HATCAT_CACHE_DIR


def model_slug(model_id: str) -> str:
    """A model id as one folder name: `embedded:gemma-3-270m` -> `gemma-3-270m`, `google/x` -> `google_x`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_id.removeprefix("embedded:"))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
