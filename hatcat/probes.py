"""Probe packs on disk, and the ProbeBank that scores every concept of a pack in one operation.

A probe pack is a folder `probes/<model-slug>/<concept-pack-id>/`:

    manifest.json          model id, tap layer, hidden size, pooling, concept ids in row order
                           (`concepts`), thresholds, sha256 of every other file, training settings
    activation.safetensors weight [N, hidden] (fp16), bias [N]: p = sigmoid(h @ weight.T + bias) on the tap layer
    text.safetensors       the same for the words-only detectors (mean input embedding of the text)
    metrics.json           held-out metrics per concept and per layer, for both sides

Loading checks the files' checksums and the manifest against the running model and concept
pack, and refuses a mismatch with the reason (`ProbePackError`). Never pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = 1
SIDES = ("activation", "text")
PROBES_ROOT = Path(__file__).resolve().parents[1] / "probes"


class ProbePackError(ValueError):
    """A probe pack is corrupt or does not fit the running model / concept pack."""


def model_slug(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_id.removeprefix("embedded:"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _finite(value: Any) -> Any:
    """JSON has no NaN: undefined metrics (e.g. AUROC with one class) become null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def save_pack(
    folder: Path,
    manifest: dict[str, Any],
    weights: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    metrics: dict[str, Any],
) -> Path:
    """Write a pack; `weights[side] = (weight, bias, threshold)`; the manifest gets thresholds + checksums."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for side in SIDES:
        weight, bias, _ = weights[side]
        path = folder / f"{side}.safetensors"
        # fp16 on disk halves the pack (and what a clone or an image carries); scoring upcasts to fp32
        save_file({"weight": weight.half().contiguous(), "bias": bias.float().contiguous()}, path)
        files[path.name] = _sha256(path)
    (folder / "metrics.json").write_text(json.dumps(_finite(metrics), indent=1, sort_keys=True) + "\n")
    files["metrics.json"] = _sha256(folder / "metrics.json")
    full = {
        "format": FORMAT,
        **manifest,
        "thresholds": {side: [round(float(t), 6) for t in weights[side][2]] for side in SIDES},
        "checksums": files,
    }
    (folder / "manifest.json").write_text(json.dumps(full, indent=1) + "\n")
    return folder


@dataclass
class ProbePack:
    """A verified probe pack: manifest, weights per side, and metrics."""

    folder: Path
    manifest: dict[str, Any]
    tensors: dict[str, dict[str, torch.Tensor]]
    metrics: dict[str, Any]

    @property
    def concepts(self) -> list[str]:
        return self.manifest["concepts"]

    @property
    def id(self) -> str:
        return f"{model_slug(self.manifest['model'])}_{self.manifest['concept_pack']['id']}"

    @property
    def checksum(self) -> str:
        """sha256 over the manifest's per-file checksums: one fingerprint for the pack's weights and metrics."""
        return hashlib.sha256(json.dumps(self.manifest.get("checksums", {}), sort_keys=True).encode()).hexdigest()

    @classmethod
    def load(cls, folder: str | Path, model_id: str | None = None, hidden_size: int | None = None) -> ProbePack:
        """Read and verify a pack; with `model_id`/`hidden_size`, refuse one made for another model."""
        folder = Path(folder)
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
        except FileNotFoundError:
            raise ProbePackError(f"{folder}: no manifest.json (not a probe pack)") from None
        except json.JSONDecodeError as err:
            raise ProbePackError(f"{folder}/manifest.json is not valid JSON: {err}") from None
        if manifest.get("format") != FORMAT:
            raise ProbePackError(f"{folder}: probe pack format {manifest.get('format')!r}, this HatCat reads {FORMAT}")
        for name, expected in manifest.get("checksums", {}).items():
            path = folder / name
            if not path.is_file():
                raise ProbePackError(f"{folder}: {name} is missing")
            if _sha256(path) != expected:
                raise ProbePackError(f"{folder}: {name} is corrupt (sha256 does not match the manifest)")
        if model_id is not None and manifest["model"] != model_id:
            raise ProbePackError(f"{folder} was trained on {manifest['model']}, but the running model is {model_id}")
        if hidden_size is not None and manifest["hidden_size"] != hidden_size:
            raise ProbePackError(f"{folder} expects hidden size {manifest['hidden_size']}, the model has {hidden_size}")
        try:
            tensors = {side: load_file(folder / f"{side}.safetensors") for side in SIDES}
        except (SafetensorError, OSError) as err:
            raise ProbePackError(f"{folder}: cannot read weights: {err}") from None
        n = len(manifest["concepts"])
        for side, t in tensors.items():
            if t["weight"].shape != (n, manifest["hidden_size"]) or t["bias"].shape != (n,):
                raise ProbePackError(
                    f"{folder}: {side} weights have shape {tuple(t['weight'].shape)}, expected ({n}, {manifest['hidden_size']})"
                )
        metrics = json.loads((folder / "metrics.json").read_text())
        return cls(folder, manifest, tensors, metrics)

    def check_concepts(self, concept_pack_id: str, checksum: str, known: set[str]) -> None:
        """Refuse a pack whose concepts do not come from the loaded concept pack."""
        recorded = self.manifest["concept_pack"]
        if recorded["id"] != concept_pack_id or recorded["checksum"] != checksum:
            raise ProbePackError(
                f"{self.folder} was trained on concept pack {recorded['id']} ({recorded['checksum'][:12]}), "
                f"but {concept_pack_id} ({checksum[:12]}) is loaded"
            )
        unknown = [c for c in self.concepts if c not in known]
        if unknown:
            raise ProbePackError(f"{self.folder}: concepts not in the concept pack: {', '.join(unknown[:5])}")


class ProbeBank:
    """All N probes of a pack stacked on the model's device: one matmul scores every concept."""

    def __init__(self, pack: ProbePack, device: torch.device | str = "cpu") -> None:
        self.pack = pack
        self.concepts = pack.concepts
        self.index = {c: i for i, c in enumerate(self.concepts)}
        self.tap_layer = int(pack.manifest["tap_layer"])
        self.pooling = pack.manifest["pooling"]
        t = pack.tensors
        # float32 on purpose: the bank is tiny next to the model and probabilities stay exact in bf16 runs
        self.act_weight = t["activation"]["weight"].to(device, torch.float32)
        self.act_bias = t["activation"]["bias"].to(device, torch.float32)
        self.text_weight = t["text"]["weight"].to(device, torch.float32)
        self.text_bias = t["text"]["bias"].to(device, torch.float32)
        thresholds = pack.manifest["thresholds"]
        self.act_threshold = torch.tensor(thresholds["activation"], device=device)
        self.text_threshold = torch.tensor(thresholds["text"], device=device)

    def __len__(self) -> int:
        return len(self.concepts)

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """Activation probabilities for hidden states [..., d] -> [..., N]."""
        return torch.sigmoid(hidden.float() @ self.act_weight.T + self.act_bias)

    def score_text(self, embedding: torch.Tensor) -> torch.Tensor:
        """Words-only probabilities for mean input embeddings [..., d] -> [..., N]."""
        return torch.sigmoid(embedding.float() @ self.text_weight.T + self.text_bias)
