"""GET /v1/models in the OpenAI list format: `hatcat-divergence` (the engine as it is now) and
one id per installed probe pack (`<model>_<concept-pack>`), the loaded one marked `loaded`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from hatcat.api.errors import error_responses
from hatcat.api.protocol import MONITOR_MODEL_ID, ModelList

router = APIRouter(prefix="/v1", responses=error_responses(401))


@router.get("/models", response_model=ModelList)
def list_models(request: Request) -> dict[str, Any]:
    engine = request.app.state.engine
    created = int(engine.loaded_at)
    loaded = engine.probe_pack_id
    data = [
        {
            "id": MONITOR_MODEL_ID,
            "object": "model",
            "created": created,
            "owned_by": "hatcat",
            "probe_pack": loaded,
            "loaded": True,
        }
    ]
    for pack_id, (_, _, pack_loaded) in engine.probe_packs().items():
        data.append(
            {
                "id": pack_id,
                "object": "model",
                "created": created,
                "owned_by": "hatcat",
                "probe_pack": pack_id,
                "loaded": pack_loaded,
            }
        )
    return {"object": "list", "data": data}
