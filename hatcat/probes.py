"""Probe packs on disk, and the ProbeBank that scores every concept of a pack in one operation.

A probe pack is a folder `probes/<model-slug>/<concept-pack-id>/`:

    manifest.json          model id, tap layer, hidden size, pooling, concept ids in row order
                           (`concepts`), thresholds, sha256 of every other file, training settings
    activation.safetensors weight [N, hidden] (fp16), bias [N]: p = sigmoid(h @ weight.T + bias) on the tap layer
    text.safetensors       the same for the words-only detector (mean input embedding of the recent tokens),
                           on the same standardised scale
    metrics.json           per concept: threshold, control-corpus FPR, natural recall, template metrics

Divergence (one definition, used by the monitor, the API and the evaluations):
    divergence = tanh((min(activation logit, threshold logit) - words-only logit) / divergence_scale[c])
the activation evidence for a concept, counted up to its firing point, that the words alone do not
account for, in [-1, 1] (hatcat/training/signal.py); `divergence_scale` (manifest) puts 0.5 at three
or more of the concept's residual standard deviations on ordinary text.

Loading checks the files' checksums and the manifest against the running model and concept
pack, and refuses a mismatch with the reason (`ProbePackError`). Never pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hatcat.errors import HatCatError
from hatcat.evidence.stored import apply as apply_calibration
from hatcat.linear import linear
from hatcat.paths import model_slug, sha256_file
from hatcat.ranking import SIDES as RANK_SIDES
from hatcat.ranking import Surprisal, rankable

FORMAT = 2  # 2: control-standardised scores, divergence_scale (capped residual), control-FPR thresholds
SIDES = ("activation", "text")


class ProbePackError(HatCatError, ValueError):
    """A probe pack is corrupt or does not fit the running model / concept pack."""

    code = "invalid_probe_pack"


def pack_id(manifest: dict[str, Any]) -> str:
    """A pack's id, as `/v1/models` lists it: `<model slug>_<concept pack id>`."""
    return f"{model_slug(manifest['model'])}_{manifest['concept_pack']['id']}"


def default_folder(root: Path, model_id: str, concept_pack_id: str) -> Path:
    """Where the pack of a model and concept pack is installed: `<root>/<model slug>/<concept pack id>/`."""
    return Path(root) / model_slug(model_id) / concept_pack_id


def discover(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(folder, manifest) of every readable pack under `root/<model>/<concept pack>/` (weights untouched)."""
    found = []
    for path in sorted(Path(root).glob("*/*/manifest.json")):
        try:
            manifest = json.loads(path.read_text())
            pack_id(manifest)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a readable pack: loading it reports why
        found.append((path.parent, manifest))
    return found


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """A probe pack's manifest.json (ProbePackError when it is missing or not JSON); weights untouched."""
    folder = Path(folder)
    try:
        return json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        raise ProbePackError(f"{folder}: no manifest.json (not a probe pack)") from None
    except json.JSONDecodeError as err:
        raise ProbePackError(f"{folder}/manifest.json is not valid JSON: {err}") from None


def read_metrics(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def per_layer(per_concept: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """`metrics.json`'s `per_layer`: mean F1 and AUROC over the concepts of a layer with both test classes."""
    by_layer: dict[int, list[dict[str, Any]]] = {}
    for m in per_concept.values():
        if m.get("n_pos") and m.get("n_neg") and m.get("layer") is not None:
            by_layer.setdefault(m["layer"], []).append(m)
    return {
        str(layer): {
            "mean_f1": round(float(np.mean([m["f1"] for m in ms])), 4),
            "mean_auroc": round(float(np.nanmean([np.nan if m["auroc"] is None else m["auroc"] for m in ms])), 4),
            "n": len(ms),
        }
        for layer, ms in sorted(by_layer.items())
    }


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
        files[path.name] = sha256_file(path)
    (folder / "metrics.json").write_text(json.dumps(_finite(metrics), indent=1, sort_keys=True) + "\n")
    files["metrics.json"] = sha256_file(folder / "metrics.json")
    full = {
        "format": FORMAT,
        **manifest,
        "thresholds": {side: [round(float(t), 6) for t in weights[side][2]] for side in SIDES},
        "checksums": files,
    }
    (folder / "manifest.json").write_text(json.dumps(full, indent=1) + "\n")
    return folder


def replace_row(
    folder: Path,
    concept: str,
    weight: torch.Tensor,
    bias: float,
    threshold: float,
    metrics: dict[str, Any],
    note: tuple[str, Any] | None = None,
) -> int:
    """Replace one concept's activation probe in the pack at `folder`: its weight row, bias, threshold and
    metrics entry (and its layer's `per_layer` mean); `note` = (manifest key, value) records where it came from.
    Checksums are rewritten, nothing else changes. Returns the row index."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if concept not in manifest["concepts"]:
        raise ProbePackError(f"{folder}: the pack has no {concept!r} concept")
    if weight.numel() != manifest["hidden_size"]:
        raise ProbePackError(f"{folder}: hidden size {manifest['hidden_size']}, the probe has {weight.numel()}")
    row = manifest["concepts"].index(concept)
    path = folder / "activation.safetensors"
    mode = path.stat().st_mode & 0o777
    tensors = load_file(path)
    tensors["weight"][row] = weight.reshape(-1).to(tensors["weight"].dtype)
    tensors["bias"][row] = float(bias)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    path.chmod(mode)  # safetensors writes 0600; keep the pack readable by the image's non-root user
    manifest["thresholds"]["activation"][row] = round(float(threshold), 6)
    doc = read_metrics(folder)
    entry = doc["per_concept"].get(concept, {})
    doc["per_concept"][concept] = {**{k: entry[k] for k in ("layer",) if k in entry}, **metrics}
    doc["per_layer"] = per_layer(doc["per_concept"])
    (folder / "metrics.json").write_text(json.dumps(_finite(doc), indent=1, sort_keys=True) + "\n")
    if note is not None:
        manifest[note[0]] = note[1]
    for name in ("activation.safetensors", "metrics.json"):
        manifest["checksums"][name] = sha256_file(folder / name)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return row


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
        return pack_id(self.manifest)

    @property
    def checksum(self) -> str:
        """sha256 over the manifest's per-file checksums: one fingerprint for the pack's weights and metrics."""
        return hashlib.sha256(json.dumps(self.manifest.get("checksums", {}), sort_keys=True).encode()).hexdigest()

    @classmethod
    def load(cls, folder: str | Path, model_id: str | None = None, hidden_size: int | None = None) -> ProbePack:
        """Read and verify a pack; with `model_id`/`hidden_size`, refuse one made for another model."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        if manifest.get("format") != FORMAT:
            raise ProbePackError(f"{folder}: probe pack format {manifest.get('format')!r}, this HatCat reads {FORMAT}")
        for name, expected in manifest.get("checksums", {}).items():
            path = folder / name
            if not path.is_file():
                raise ProbePackError(f"{folder}: {name} is missing")
            if sha256_file(path) != expected:
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
        if len(manifest.get("divergence_scale", ())) != n:
            raise ProbePackError(f"{folder}: manifest needs one divergence_scale per concept ({n})")
        for side, t in tensors.items():
            if t["weight"].shape != (n, manifest["hidden_size"]) or t["bias"].shape != (n,):
                raise ProbePackError(
                    f"{folder}: {side} weights have shape {tuple(t['weight'].shape)}, expected ({n}, {manifest['hidden_size']})"
                )
        rows = manifest.get("behaviour_rows") or {}
        if not isinstance(rows, dict) or not all(
            c in manifest["concepts"] and isinstance((e or {}).get("threshold"), (int, float)) for c, e in rows.items()
        ):
            raise ProbePackError(
                f"{folder}: manifest behaviour_rows needs {{concept of the pack: {{threshold: number}}}}"
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
        self.divergence_scale = torch.tensor(pack.manifest["divergence_scale"], device=device)
        self.act_cap = torch.logit(self.act_threshold.clamp(1e-6, 1 - 1e-6))  # the firing point, as a logit
        # behaviour read-outs (Deception) are not concepts: the one mask that keeps them out of every ranking
        self.rankable = rankable(self.concepts).to(device)
        # the corpus calibration (hatcat/evidence/calibration.py), where built: per-side surprisals for the rank
        # score (hatcat/ranking.py) and family-wise firing thresholds (replacing the pack's)
        self.pack_threshold = self.act_threshold.clone()
        self.surprisal = {
            side: Surprisal.identity(len(self.concepts), device, slope) for side, slope in zip(RANK_SIDES, (1.0, 0.0))
        }
        self.calibrated = apply_calibration(self)
        # behaviour rows are reported as behaviours, against the threshold the manifest measured for them on
        # ordinary generated text (`behaviour_rows`, experiments/behaviour.py), else the row's own threshold
        self.behaviour_rows = (~self.rankable).nonzero()[:, 0]
        measured = pack.manifest.get("behaviour_rows") or {}
        self.behaviour_threshold = tuple(
            float(measured.get(self.concepts[i], {}).get("threshold", self.pack_threshold[i]))
            for i in self.behaviour_rows.tolist()
        )

    def __len__(self) -> int:
        return len(self.concepts)

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """Activation probabilities for hidden states [..., d] -> [..., N]."""
        return torch.sigmoid(linear(hidden.float(), self.act_weight, self.act_bias))

    def rank_score(self, act: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Per token [..., N]: the surprisal of the activation plus that of the words-only score on ordinary
        text (hatcat/ranking.py), one scale across concepts; -inf for behaviour rows."""
        act_side, words_side = (
            self.surprisal[side](torch.logit(p.clamp(1e-7, 1 - 1e-7))) for side, p in zip(RANK_SIDES, (act, text))
        )
        return act_side.add_(words_side).masked_fill_(~self.rankable, float("-inf"))

    def scores(self, hidden: torch.Tensor, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(activation, words-only, divergence), each [..., N]: one matmul per side."""
        act = linear(hidden.float(), self.act_weight, self.act_bias)
        text = linear(embedding.float(), self.text_weight, self.text_bias)
        div = torch.tanh((torch.minimum(act, self.act_cap) - text) / self.divergence_scale)
        return torch.sigmoid(act), torch.sigmoid(text), div
