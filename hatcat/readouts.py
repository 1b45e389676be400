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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from hatcat.paths import sha256_file
from hatcat.probes import ProbePackError

OUTPUT_FEATURES = ("mean_logprob", "min_logprob", "entropy", "first_token_prob")
WEIGHTS = "readouts.safetensors"


def token_stats(logprobs: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of each token, entropy of its distribution), each [T], from the
    log-distributions that produced the tokens (`logprobs` [T, V], `tokens` [T])."""
    return logprobs.gather(-1, tokens[..., None])[..., 0], -(logprobs.exp() * logprobs).sum(-1)


def output_features(took: torch.Tensor, entropy: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """[..., 4]: OUTPUT_FEATURES of responses from their tokens' log-probabilities and entropies
    ([..., T] each; `real` [..., T] marks the tokens of right-padded rows, default all)."""
    if real is None:
        real = torch.ones_like(took, dtype=torch.bool)
    n = real.sum(-1)
    return torch.stack(
        [
            (took * real).sum(-1) / n,
            took.masked_fill(~real, float("inf")).min(-1).values,
            (entropy * real).sum(-1) / n,
            took[..., 0].exp(),
        ],
        dim=-1,
    )


def position_stats(
    head: nn.Module, states: torch.Tensor, tokens: torch.Tensor, chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_stats` of `tokens` [P] under the output layer `head` applied at `states` [P, d] only,
    `chunk` positions at a time (a [P, vocabulary] fp32 distribution is ~1 MB per position)."""
    parts = [token_stats(head(s).float().log_softmax(-1), t) for s, t in zip(states.split(chunk), tokens.split(chunk))]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


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
        return self.score_many({b: s[None] for b, s in mean_states.items()}, outputs[None])[0]

    def score_many(self, mean_states: dict[int, torch.Tensor], outputs: torch.Tensor) -> list[dict[str, dict]]:
        """`score` for B responses at once: `mean_states` {block: [B, d]}, `outputs` [B, 4]."""
        states = torch.stack([mean_states[b] for b in self.blocks], dim=1).float()  # [B, R, d]
        scores = (states * self.state_weight).sum(-1) + outputs.float() @ self.output_weight.T + self.bias  # [B, R]
        thresholds = self.threshold.tolist()
        return [
            {
                name: {"score": round(s, 4), "threshold": round(t, 4), "fired": s >= t}
                for name, s, t in zip(self.names, row, thresholds, strict=True)
            }
            for row in scores.tolist()
        ]

    def read_texts(
        self, head: nn.Module, last: torch.Tensor, taps: dict[int, torch.Tensor], ids: torch.Tensor, lengths: list[int]
    ) -> list[dict[str, dict]]:
        """Each of B right-padded texts read as a response, from ONE forward's outputs: `last` [B, L, d]
        (the final normed states), `taps` {block: [B, L, d]} at least at the read-outs' blocks, `ids`
        [B, L], `lengths` the real tokens per row. Its tokens after the first count, each on the state
        and distribution that produced it (as a stream sees them); the output layer `head` runs only
        at those positions."""
        spans = torch.tensor([max(n - 1, 1) for n in lengths], device=ids.device)
        real = torch.arange(ids.shape[1], device=ids.device)[None, :] < spans[:, None]  # [B, L]: produced a token
        following = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1)  # the token each position produced
        took, entropy = (torch.zeros(real.shape, device=ids.device) for _ in range(2))
        took[real], entropy[real] = position_stats(head, last[real], following[real])
        means = {b: (taps[b].float() * real[..., None]).sum(1) / spans[:, None] for b in set(self.blocks)}
        return self.score_many(means, output_features(took, entropy, real))


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
