"""GET /v1/probe-packs[/{id}]; POST /v1/probe-packs/{id}/load (admin) hot-loads one.

Probe packs are the ones installed under `probes/` (their manifests read, weights untouched) plus
the loaded one, wherever it came from (`HATCAT_PROBE_PACK`).
"""

from __future__ import annotations

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
