"""GET /v1/concept-packs[/{id}[/concepts/{concept}]]: the concept pack the engine loaded (with its melds).

A concept's page adds, from the loaded probe pack, its evidence (`Engine.concept_evidence`): `examples`
{top, random} (corpus contexts, the firing token apart in `token`), `firing_rate` and the `quality` card."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter, Request

from hatcat.api.errors import APIError, error_responses
from hatcat.engine import Engine

router = APIRouter(prefix="/v1", responses=error_responses(401, 404))


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
    engine = _concept_pack(request, pack_id)
    pack = engine.concepts
    if concept not in pack:
        raise APIError(
            404,
            f"unknown concept: {concept} (not in concept pack {pack_id})",
            param="concept",
            code="concept_not_found",
        )
    return {**pack[concept].to_record(), "children": list(pack[concept].children), **engine.concept_evidence(concept)}


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
