"""GET /v1/concept-packs[/{id}[/concepts/{concept}]] and /v1/probe-packs[/{id}]; POST
/v1/probe-packs/{id}/load (admin) hot-loads one.

The concept pack is the one the engine loaded (with its melds). Probe packs are the ones
installed under `probes/` (their manifests read, weights untouched) plus the loaded one,
wherever it came from (`HATCAT_PROBE_PACK`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request

from hatcat.access import Role
from hatcat.api.auth import requires
from hatcat.api.errors import APIError, error_responses
from hatcat.api.records import audit
from hatcat.engine import Engine
from hatcat.probes import read_metrics

router = APIRouter(prefix="/v1", responses=error_responses(401, 404))


def _summary(pid: str, folder: Path, manifest: dict[str, Any], loaded: bool) -> dict[str, Any]:
    return {
        "id": pid,
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
    packs = request.app.state.engine.probe_packs()
    return {"object": "list", "data": [_summary(pid, *pack) for pid, pack in packs.items()]}


def _installed(engine: Engine, pack_id: str) -> tuple[Path, dict[str, Any], bool]:
    packs = engine.probe_packs()
    if pack_id not in packs:
        known = ", ".join(packs) or "none installed"
        raise APIError(
            404, f"unknown probe pack: {pack_id} (available: {known})", param="pack_id", code="probe_pack_not_found"
        )
    return packs[pack_id]


@router.get("/probe-packs/{pack_id}")
def get_probe_pack(pack_id: str, request: Request) -> dict[str, Any]:
    engine = request.app.state.engine
    folder, manifest, loaded = _installed(engine, pack_id)
    metrics = engine.probe_metrics() if loaded else read_metrics(folder)
    details = {k: v for k, v in manifest.items() if k not in ("thresholds", "checksums")}
    return {**_summary(pack_id, folder, manifest, loaded), "manifest": details, "metrics": metrics}


@router.post(
    "/probe-packs/{pack_id}/load",
    dependencies=[Depends(requires(Role.admin, "loading a probe pack"))],
    responses=error_responses(403, 409, 503),
)
def load_probe_pack(pack_id: str, request: Request) -> dict[str, Any]:
    """Hot-load an installed probe pack: every client is monitored with it from the next request on."""
    engine: Engine = request.app.state.engine
    folder, manifest, _ = _installed(engine, pack_id)
    audit(request, "pack_loaded", pack_id, folder=str(folder))
    engine.load_probes(folder)  # a pack that does not fit the model or concept pack: its own error
    return _summary(pack_id, folder, manifest, loaded=True)
