"""The corpus calibration as stored beside a probe pack (`calibration.safetensors` + `evidence.json`), and
how a `ProbeBank` takes it at load. Kept apart from the fitting (`calibration.py`, which needs the scan)
so that loading a bank imports nothing that imports the bank."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hatcat.paths import sha256_file
from hatcat.ranking import FIELDS, SIDES

FILE, SIDECAR = "calibration.safetensors", "evidence.json"


def write(folder: Path, tensors: dict[str, torch.Tensor], info: dict) -> None:
    """`calibration.safetensors` + `evidence.json` (row order, checksums of the evidence files, `info`)."""
    folder = Path(folder)
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / FILE)
    (folder / FILE).chmod(0o644)  # safetensors writes 0600; the image's non-root user reads the pack
    files = {name: sha256_file(folder / name) for name in (FILE, "evidence.parquet") if (folder / name).is_file()}
    (folder / SIDECAR).write_text(json.dumps({**info, "checksums": files}, indent=1) + "\n")


def fingerprint(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """[N, 2]: each probe row's weight norm and bias: a row retrained since the scan no longer matches."""
    return torch.stack([weight.float().norm(dim=1), bias.float()], 1)


def apply(bank) -> int:
    """Give a `ProbeBank` the calibration stored beside its pack, row by row (matched by concept name and
    fingerprint; other rows keep the pack's threshold and the logit as rank score). Returns the rows calibrated."""
    folder = Path(bank.pack.folder)
    try:
        info = json.loads((folder / SIDECAR).read_text())
        if sha256_file(folder / FILE) != info["checksums"][FILE]:
            return 0
        saved = load_file(folder / FILE)
    except (OSError, ValueError, KeyError):
        return 0
    names = {c: i for i, c in enumerate(info.get("concepts", ()))}
    rows = torch.tensor([names.get(c, -1) for c in bank.concepts])
    mine = fingerprint(bank.act_weight.cpu(), bank.act_bias.cpu())
    have = rows >= 0
    match = have.clone()
    match[have] = torch.isclose(saved["fingerprint"][rows[have]], mine[have], rtol=1e-4, atol=1e-4).all(1)
    src, dst = rows[match], match.nonzero()[:, 0]
    device = bank.act_threshold.device
    bank.act_threshold[dst.to(device)] = torch.sigmoid(saved["fire_logit"][src]).to(device)
    for side in SIDES:
        if all(f"{side}_{f}" in saved for f in FIELDS):
            for f in FIELDS:
                getattr(bank.surprisal[side], f)[dst.to(device)] = saved[f"{side}_{f}"][src].float().to(device)
    return int(match.sum())
