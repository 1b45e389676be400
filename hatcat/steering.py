"""Steering: push the residual stream along a concept's probe direction, reversibly.

A `Steering` says which concept, how strongly and at which decoder block. Strength is in
units of that block's typical hidden-state norm, so +1 adds a vector as long as an average
hidden state (far beyond what text alone produces); useful values lie around 0.05–0.5, and
negative values steer away. The vector is the activation probe's weight direction.

`SteeringVectors` turns a steering into its vector; the Scheduler (`hatcat.batching`) adds each
row's vectors to the residual stream on every forward. `SteeringRegistry` keeps each session's
steerings (add, update, remove, list, clear).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from hatcat.errors import InvalidValue, NotFound
from hatcat.probes import ProbeBank
from hatcat.tap import hidden_at

MAX_STRENGTH = 4.0
_NORM_PROMPT = "The weather was mild, so we walked to the market, bought bread and talked about the week."


@dataclass(frozen=True)
class Steering:
    """Add `strength` x (typical hidden norm) x unit(probe direction of `concept`) at block `layer`."""

    concept: str
    strength: float
    layer: int | None = None  # None: the probe pack's tap layer

    def __post_init__(self) -> None:
        if not -MAX_STRENGTH <= self.strength <= MAX_STRENGTH:
            raise InvalidValue(
                f"strength {self.strength} is out of range; allowed: -{MAX_STRENGTH}..{MAX_STRENGTH}", param="strength"
            )


class UnknownConcept(NotFound):
    """A steering names a concept the probe bank has no probe for (or the session does not steer)."""

    code = "concept_not_found"
    param = "concept"

    def __init__(self, concept: str, reason: str = "") -> None:
        super().__init__(f"unknown concept: {concept}" + (f": {reason}" if reason else ""))
        self.concept = concept


class SteeringRegistry:
    """Per-session steerings; safe to use from several request threads."""

    def __init__(self) -> None:
        self._sessions: dict[str, dict[str, Steering]] = {}
        self._lock = threading.Lock()

    def add(self, session: str, steering: Steering) -> Steering:
        with self._lock:
            self._sessions.setdefault(session, {})[steering.concept] = steering
        return steering

    def update(self, session: str, concept: str, strength: float | None = None, layer: int | None = None) -> Steering:
        with self._lock:
            current = self._sessions.get(session, {}).get(concept)
            if current is None:
                raise UnknownConcept(concept)
            changed = replace(
                current,
                strength=current.strength if strength is None else strength,
                layer=current.layer if layer is None else layer,
            )
            self._sessions[session][concept] = changed
        return changed

    def remove(self, session: str, concept: str) -> Steering:
        with self._lock:
            if concept not in self._sessions.get(session, {}):
                raise UnknownConcept(concept)
            return self._sessions[session].pop(concept)

    def list(self, session: str) -> list[Steering]:
        with self._lock:
            return list(self._sessions.get(session, {}).values())

    def clear(self, session: str) -> int:
        with self._lock:
            return len(self._sessions.pop(session, {}))


class SteeringVectors:
    """Builds the vectors: probe directions scaled by each block's typical hidden norm (measured once)."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, bank: ProbeBank) -> None:
        self.model, self.tokenizer, self.bank = model, tokenizer, bank
        self._norms: dict[int, float] = {}

    def norm(self, layer: int) -> float:
        if layer not in self._norms:
            inputs = self.tokenizer(_NORM_PROMPT, return_tensors="pt").to(self.bank.act_weight.device)
            hidden = hidden_at(self.model, dict(inputs), [layer])[layer][0, 1:]  # skip BOS: its norm is atypical
            self._norms[layer] = float(hidden.float().norm(dim=-1).mean())
        return self._norms[layer]

    def vector(self, steering: Steering) -> tuple[int, torch.Tensor]:
        if steering.concept not in self.bank.index:
            raise UnknownConcept(steering.concept, "the loaded probe pack has no probe for it")
        layer = self.bank.tap_layer if steering.layer is None else steering.layer
        direction = self.bank.act_weight[self.bank.index[steering.concept]]
        return layer, steering.strength * self.norm(layer) * direction / direction.norm()
