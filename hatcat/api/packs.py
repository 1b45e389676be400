"""GET /v1/concept-packs[/{id}[/concepts/{concept}]] and /v1/probe-packs[/{id}].

The concept pack is the one the engine loaded (with its melds). Probe packs are the ones
installed under `probes/` (their manifests read, weights untouched) plus the loaded one,
wherever it came from (`HATCAT_PROBE_PACK`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request

from hatcat.access import Role
from hatcat.api.auth import requires
from hatcat.api.errors import APIError, error_responses
from hatcat.api.records import audit
from hatcat.engine import Engine
from hatcat.probes import PROBES_ROOT, ProbePackError, model_slug

router = APIRouter(prefix="/v1", responses=error_responses(401, 404))


def installed_probe_packs(engine: Engine) -> dict[str, dict[str, Any]]:
    """Probe pack id -> summary, for every manifest under `probes/` and the loaded pack."""
    packs: dict[str, dict[str, Any]] = {}
    for path in sorted(PROBES_ROOT.glob("*/*/manifest.json")) if PROBES_ROOT.is_dir() else []:
        try:
            manifest = json.loads(path.read_text())
            packs[_pack_id(manifest)] = _summary(manifest, path.parent, loaded=False)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a readable pack: /health and the workbench report load errors, not this list
    if engine.probes is not None:
        packs[engine.probes.id] = _summary(engine.probes.manifest, engine.probes.folder, loaded=True)
    return packs


def _pack_id(manifest: dict[str, Any]) -> str:
    return f"{model_slug(manifest['model'])}_{manifest['concept_pack']['id']}"


def _summary(manifest: dict[str, Any], folder: Path, loaded: bool) -> dict[str, Any]:
    return {
        "id": _pack_id(manifest),
        "object": "probe_pack",
        "model": manifest["model"],
        "concept_pack": manifest["concept_pack"]["id"],
        "concepts": len(manifest["concepts"]),
        "tap_layer": manifest.get("tap_layer"),
        "hidden_size": manifest.get("hidden_size"),
        "folder": folder.name,
        "loaded": loaded,
    }


@router.get("/concept-packs")
def list_concept_packs(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_concept_pack_summary(request.app.state.engine)]}


@router.get("/concept-packs/{pack_id}")
def get_concept_pack(pack_id: str, request: Request) -> dict[str, Any]:
    engine = _concept_pack(request, pack_id)
    pack = engine.concepts
    by_layer: dict[str, list[str]] = {}
    for concept in pack:
        by_layer.setdefault(str(concept.layer), []).append(concept.id)
    return {**_concept_pack_summary(engine), "concept_ids_by_layer": by_layer}


@router.get("/concept-packs/{pack_id}/concepts/{concept}")
def get_concept(pack_id: str, concept: str, request: Request) -> dict[str, Any]:
    pack = _concept_pack(request, pack_id).concepts
    if concept not in pack:
        raise APIError(
            404,
            f"unknown concept: {concept} (not in concept pack {pack_id})",
            param="concept",
            code="concept_not_found",
        )
    return {**pack[concept].to_record(), "children": list(pack[concept].children)}


def _concept_pack(request: Request, pack_id: str) -> Engine:
    engine = request.app.state.engine
    if pack_id != engine.concepts.id:
        raise APIError(
            404,
            f"unknown concept pack: {pack_id} (loaded: {engine.concepts.id})",
            param="pack_id",
            code="concept_pack_not_found",
        )
    return engine


def _concept_pack_summary(engine: Engine) -> dict[str, Any]:
    pack = engine.concepts
    layers = Counter(concept.layer for concept in pack)
    return {
        "id": pack.id,
        "object": "concept_pack",
        "checksum": pack.checksum,
        "concepts": len(pack),
        "layers": {str(layer): layers[layer] for layer in sorted(layers)},
        "loaded": True,
    }


@router.get("/probe-packs")
def list_probe_packs(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": list(installed_probe_packs(request.app.state.engine).values())}


@router.get("/probe-packs/{pack_id}")
def get_probe_pack(pack_id: str, request: Request) -> dict[str, Any]:
    engine = request.app.state.engine
    packs = installed_probe_packs(engine)
    if pack_id not in packs:
        known = ", ".join(packs) or "none installed"
        raise APIError(
            404, f"unknown probe pack: {pack_id} (available: {known})", param="pack_id", code="probe_pack_not_found"
        )
    summary = packs[pack_id]
    if summary["loaded"]:
        manifest, metrics = engine.probes.manifest, engine.probes.metrics
    else:
        path = _installed_folder(summary) / "manifest.json"
        manifest = json.loads(path.read_text())
        metrics_path = path.parent / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    details = {k: v for k, v in manifest.items() if k not in ("thresholds", "checksums")}
    return {**summary, "manifest": details, "metrics": metrics}


def _installed_folder(summary: dict[str, Any]) -> Path:
    return next(
        p.parent
        for p in PROBES_ROOT.glob(f"*/{summary['folder']}/manifest.json")
        if _pack_id(json.loads(p.read_text())) == summary["id"]
    )


@router.post(
    "/probe-packs/{pack_id}/load",
    dependencies=[Depends(requires(Role.admin, "loading a probe pack"))],
    responses=error_responses(403, 409, 503),
)
def load_probe_pack(pack_id: str, request: Request) -> dict[str, Any]:
    """Hot-load an installed probe pack: every client is monitored with it from the next request on."""
    engine: Engine = request.app.state.engine
    packs = installed_probe_packs(engine)
    if pack_id not in packs:
        known = ", ".join(packs) or "none installed"
        raise APIError(
            404, f"unknown probe pack: {pack_id} (available: {known})", param="pack_id", code="probe_pack_not_found"
        )
    folder = engine.probes.folder if packs[pack_id]["loaded"] else _installed_folder(packs[pack_id])
    audit(request, "pack_loaded", pack_id, folder=str(folder))
    try:
        engine.load_probes(folder)
    except ProbePackError as err:
        raise APIError(409, f"cannot load {pack_id}: {err}", param="pack_id", code="probe_pack_mismatch") from None
    return packs[pack_id] | {"loaded": True}
