"""Behaviour read-outs: `falsehood`, `deception` and `withholding` as named scores of a response.

A read-out taps its own decoder block, which may differ from the concept bank's (block 9 for a
truth direction, 15 for concepts): the same forward pass carries one hook per block and each block's
states go through one product. Per response it reads the mean state of the response's tokens at its
block and the response's own token probabilities (from the logits that forward already has):

    score = w · mean_state[block] + v · [mean log-prob, min log-prob, mean entropy, first token prob] + b
    fired = score >= threshold   (the threshold: 5% false positives on ordinary text the model generated)

A probe pack lists them in its manifest as `readouts: {name: {block, threshold, ...}}` with the
weights in `readouts.safetensors` beside it (`python -m experiments.behaviour` writes both).
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from hatcat.paths import sha256_file
from hatcat.probes import ProbePackError
from hatcat.tap import tap

OUTPUT_FEATURES = ("mean_logprob", "min_logprob", "entropy", "first_token_prob")
WEIGHTS = "readouts.safetensors"


def token_stats(logprobs: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of each token, entropy of its distribution), each [T], from the
    log-distributions that produced the tokens (`logprobs` [T, V], `tokens` [T])."""
    return logprobs.gather(-1, tokens[..., None])[..., 0], -(logprobs.exp() * logprobs).sum(-1)


def output_features(took: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
    """[4]: OUTPUT_FEATURES of a response from its tokens' log-probabilities and entropies ([T] each)."""
    return torch.stack([took.mean(), took.min(), entropy.mean(), took[0].exp()])


@dataclass(frozen=True)
class Readouts:
    """The read-outs of one probe pack, stacked per block."""

    names: tuple[str, ...]
    blocks: tuple[int, ...]  # one per read-out
    state_weight: torch.Tensor  # [R, d]
    output_weight: torch.Tensor  # [R, len(OUTPUT_FEATURES)]
    bias: torch.Tensor  # [R]
    threshold: torch.Tensor  # [R]

    @classmethod
    def load(cls, folder: Path, manifest: dict[str, Any], device: torch.device | str = "cpu") -> Readouts | None:
        """The pack's read-outs (None when its manifest lists none)."""
        entries = manifest.get("readouts") or {}
        if not entries:
            return None
        try:
            weights = load_file(folder / WEIGHTS)
        except (SafetensorError, OSError) as err:
            raise ProbePackError(f"{folder}: cannot read the read-outs' weights: {err}") from None
        names = tuple(entries)
        missing = [f"{n}.{part}" for n in names for part in ("state_weight", "bias") if f"{n}.{part}" not in weights]
        wrong = [
            n
            for n in names
            if f"{n}.state_weight" in weights and len(weights[f"{n}.state_weight"]) != manifest["hidden_size"]
        ]
        if missing or wrong:
            raise ProbePackError(
                f"{folder}: read-out weights missing ({', '.join(missing)}) or of the wrong size ({', '.join(wrong)})"
            )
        output = [
            weights[f"{n}.output_weight"] if entries[n].get("output_features") else torch.zeros(len(OUTPUT_FEATURES))
            for n in names
        ]
        return cls(
            names,
            tuple(int(entries[n]["block"]) for n in names),
            torch.stack([weights[f"{n}.state_weight"] for n in names]).to(device, torch.float32),
            torch.stack(output).to(device, torch.float32),
            torch.cat([weights[f"{n}.bias"] for n in names]).to(device, torch.float32),
            torch.tensor([float(entries[n]["threshold"]) for n in names], device=device),
        )

    def score(self, mean_states: dict[int, torch.Tensor], outputs: torch.Tensor) -> dict[str, dict[str, object]]:
        """{name: {score, threshold, fired}} for one response: `mean_states` {block: [d]}, `outputs` [4]."""
        states = torch.stack([mean_states[b] for b in self.blocks]).float()  # [R, d]
        scores = (states * self.state_weight).sum(1) + self.output_weight @ outputs.float() + self.bias
        values, thresholds = scores.tolist(), self.threshold.tolist()
        return {
            name: {"score": round(s, 4), "threshold": round(t, 4), "fired": s >= t}
            for name, s, t in zip(self.names, values, thresholds, strict=True)
        }


@torch.inference_mode()
def text_behaviours(model: nn.Module, tokenizer, readouts: Readouts, texts: list[str]) -> list[dict[str, dict]]:
    """Each text read as a response: its tokens after the first, each on the state (at every read-out's
    block) and the distribution that produced it, as a stream sees them. One right-padded forward
    through the output layer (the concept analysis stops at the bank's block)."""
    encoded = [tokenizer(t).input_ids for t in texts]
    device = readouts.bias.device
    ids = torch.full((len(texts), max(map(len, encoded))), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, e in enumerate(encoded):
        ids[r, : len(e)], mask[r, : len(e)] = torch.tensor(e), 1
    ids, mask = ids.to(device), mask.to(device)
    with ExitStack() as stack:
        taps = {b: stack.enter_context(tap(model, b)) for b in sorted(set(readouts.blocks))}
        last = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    spans = [max(len(e) - 1, 1) for e in encoded]  # the states that produced tokens 1..n-1
    logprobs = model.get_output_embeddings()(torch.cat([last[r, :n] for r, n in enumerate(spans)]))
    found = []
    for r, lp in enumerate(logprobs.float().log_softmax(-1).split(spans)):  # one product for the batch
        took, entropy = token_stats(lp, ids[r, 1 : spans[r] + 1])
        means = {b: taps[b].hidden[r, : spans[r]].float().mean(0) for b in taps}
        found.append(readouts.score(means, output_features(took, entropy)))
    return found


def install(folder: Path, weights: dict[str, torch.Tensor], entries: dict[str, dict[str, Any]]) -> None:
    """Write read-outs into the probe pack at `folder`: `readouts.safetensors` beside it, the
    `readouts` manifest entry and its checksum (an empty `entries` removes them)."""
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    target = folder / WEIGHTS
    manifest.pop("readouts", None)
    manifest.get("checksums", {}).pop(WEIGHTS, None)
    target.unlink(missing_ok=True)
    if entries:
        save_file({k: v.contiguous() for k, v in weights.items() if k.split(".")[0] in entries}, target)
        target.chmod(0o644)
        manifest["readouts"] = entries
        manifest.setdefault("checksums", {})[WEIGHTS] = sha256_file(target)
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
