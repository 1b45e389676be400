"""What the API and the workbench show of a concept's evidence: its dashboard and quality card."""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from hatcat.evidence import dashboards
from hatcat.evidence.card import card
from hatcat.evidence.stored import SIDECAR
from hatcat.probes import ProbePack

BUILD = "python -m hatcat.corpus evidence"


@lru_cache(maxsize=4)
def _dashboards(folder: Path, checksum: str) -> dict[str, dict] | None:
    del checksum  # part of the cache key: a rebuilt pack is read again
    return dashboards.read(folder)


def pack_dashboards(pack: ProbePack) -> dict[str, dict] | None:
    """concept -> dashboard row of a loaded pack (read once per pack), or None when none were built."""
    path = pack.folder / dashboards.FILE
    stamp = f"{pack.checksum}:{path.stat().st_mtime_ns if path.is_file() else 0}"
    return _dashboards(pack.folder, stamp)


def _clean(context: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in context.items()}


def evidence(pack: ProbePack, concept: str) -> dict[str, Any]:
    """A concept's `examples` {top, random}, `firing_rate`, corpus statistics and `quality` card."""
    rows = pack_dashboards(pack)
    row = rows.get(concept) if rows else None
    metrics = pack.metrics.get("per_concept", {}).get(concept, {})
    out: dict[str, Any] = {
        "probe_pack": pack.id,
        "threshold": metrics.get("threshold"),
        "quality": card(metrics, row),
        "firing_rate": None,
        "examples": None,
    }
    if row is None:
        out["evidence_missing"] = f"no corpus dashboards for this pack: build them with `{BUILD}`"
        return out
    out["firing_rate"] = row["firing_rate"]
    out["corpus"] = {
        k: row[k] for k in ("firing_rate_dev", "firing_rate_test", "corpus_mean", "corpus_std", "q50", "q99", "q999")
    }
    out["examples"] = {"top": [_clean(c) for c in row["top"]], "random": [_clean(c) for c in row["random"]]}
    return out


def cards(pack: ProbePack) -> list[dict[str, Any]]:
    """Every concept's quality card with its layer, in pack order (the Pack report's table)."""
    rows = pack_dashboards(pack) or {}
    per = pack.metrics.get("per_concept", {})
    return [
        {"concept": c, "layer": per.get(c, {}).get("layer"), **card(per.get(c, {}), rows.get(c))} for c in pack.concepts
    ]


def info(pack: ProbePack) -> dict[str, Any]:
    """The pack's evidence.json, {} when none was written."""
    path = pack.folder / SIDECAR
    return json.loads(path.read_text()) if path.is_file() else {}
