"""Monitor: per token, every concept's activation and words-only score, divergence, hierarchy.

For one token the monitor gets the tap layer's hidden state and the mean input embedding of
the recent output tokens (the words alone). `ProbeBank` scores all N concepts on both in one
matrix product each; everything after that is vector arithmetic over N and one top-k, with a
single device-to-host copy of the k reported rows.

Hierarchy policy (as the original's dynamic loading, without loading anything):
- concepts in `base_layers` are always eligible, as are concepts without a parent in the bank;
- a child becomes eligible when one of its parents fires (activation >= its threshold);
- a parent is dropped from the report when one of its eligible children fires (most specific wins);
- at most `keep_top_k` concepts are reported, highest rank score (`ProbeBank.rank_score`, hatcat/ranking.py;
  the activation logit for a pack without the corpus calibration) first; with the pack's corpus calibration (hatcat/evidence/calibration.py) only concepts that fire under
  its family-wise thresholds; behaviour rows (`ProbeBank.rankable`) never.

A response's top concepts are ranked by the response-level score of hatcat/ranking.py (the two highest
per-token rank scores, then the hierarchy rule), the one ranking the stream's final analysis, /v1/analyze
and the open-set evaluation use.

divergence (hatcat/probes.py, `ProbeBank.scores`): the part of the activation evidence for a concept
that the words alone do not predict, tanh((activation logit - words-only logit) / scale) in [-1, 1];
high where the model represents a concept that its words do not say. A token's color is the
divergence of largest magnitude among its reported concepts that fire (activation >= threshold), 0
when none fires: ordinary text, where nothing fires beyond its usual range, stays white.
"""

from __future__ import annotations

import copy
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from hatcat.concepts import ConceptPack
from hatcat.heatmap import divergence_colour
from hatcat.probes import ProbeBank
from hatcat.ranking import own_evidence, response_level
from hatcat.readouts import Readouts

TEXT_WINDOW = 8  # output tokens the words-only detector reads; training texts are about this long
TOP_DIVERGENCES = 10  # concepts per token in a record's `top_divergences` (the API's), highest divergence first
TOP_CONCEPTS = 10  # concepts in a response summary


class ConceptScore(NamedTuple):
    """One reported concept on one token (a named tuple: records make tens of thousands per batch,
    and a frozen dataclass costs 3x as much to build)."""

    concept: str
    layer: int
    activation: float
    text_similarity: float
    divergence: float


@dataclass(frozen=True)
class TokenRecord:
    """What the monitor saw on one token."""

    index: int
    token: str
    concepts: tuple[ConceptScore, ...]
    max_divergence: float
    color: str

    def to_dict(self, top: int | None = TOP_DIVERGENCES) -> dict[str, Any]:
        """The one shape of a token's record (API answers, stream metadata, traces, embeds): its `top`
        concepts by divergence, highest first (None: every reported concept)."""
        concepts = sorted(self.concepts, key=lambda c: -c.divergence)[:top]
        divergence = {"max_divergence": self.max_divergence, "top_divergences": [c._asdict() for c in concepts]}
        return {"index": self.index, "token": self.token, "color": self.color, "divergence": divergence}


class ConceptSummary(NamedTuple):
    concept: str
    tokens: int  # tokens where it was reported (fired)
    mean_divergence: float  # over those tokens (0 where none)
    score: float  # the response-level rank score (hatcat/ranking.py): the summary's order


@dataclass(frozen=True)
class ResponseSummary:
    """The response-level analysis line: mean and max divergence, top concepts."""

    tokens: int
    mean_divergence: float
    max_divergence: float
    top_concepts: tuple[ConceptSummary, ...] = field(default_factory=tuple)
    # {name: {score, threshold, fired}}: the pack's read-outs (hatcat.readouts) and behaviour rows (`Deception`)
    behaviours: dict[str, dict[str, object]] | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "tokens": self.tokens,
            "mean_divergence": self.mean_divergence,
            "max_divergence": self.max_divergence,
            "top_concepts": [c._asdict() for c in self.top_concepts],
            **({"behaviours": self.behaviours} if self.behaviours is not None else {}),
        }

    def line(self) -> str:
        top = ", ".join(f"{c.concept} ({c.score:.1f})" for c in self.top_concepts[:5])
        return f"Analysis: mean divergence {self.mean_divergence:+.3f}, max {self.max_divergence:+.3f}; top: {top or 'none'}"


class Monitor:
    """Turns per-token hidden states into TokenRecords for one probe bank and concept pack."""

    def __init__(
        self,
        bank: ProbeBank,
        pack: ConceptPack,
        base_layers: tuple[int, ...] = (0,),
        keep_top_k: int = 100,
        readouts: Readouts | None = None,
    ) -> None:
        self.bank = bank
        self.keep_top_k = keep_top_k
        self.readouts = readouts
        # the decoder blocks a forward taps for this monitor: the bank's, and each read-out's own
        self.blocks = tuple(sorted({bank.tap_layer, *(readouts.blocks if readouts else ())}))
        device = bank.act_weight.device
        self.layer_of = [pack[c].layer for c in bank.concepts]  # host copy: records read it per token
        self.layers = torch.tensor(self.layer_of, device=device)
        parents = [[bank.index[p] for p in pack.parents(c) if p in bank.index] for c in bank.concepts]
        children = [[bank.index[k] for k in pack.children(c) if k in bank.index] for c in bank.concepts]
        self.parent_edges = _edges(parents, device)  # (concept, one of its parents) pairs
        self.child_edges = _edges(children, device)
        always = torch.tensor([not p for p in parents], device=device)
        self.always_eligible = always | torch.isin(self.layers, torch.tensor(base_layers, device=device))
        self.thresholds = bank.act_threshold.clone()
        # behaviour rows (`Deception`): not concepts, so reported as behaviours (`row_behaviours`)
        self.behaviour_rows = bank.behaviour_rows
        self.behaviour_names = tuple(bank.concepts[i] for i in bank.behaviour_rows.tolist())

    def row_behaviours(self, mean_activation: torch.Tensor) -> dict[str, dict[str, object]]:
        """{row: {score, threshold, fired}} from the behaviour rows' mean activation over a response's tokens [R]."""
        return {
            name: {"score": round(v, 4), "threshold": round(t, 4), "fired": v >= t}
            for name, v, t in zip(self.behaviour_names, mean_activation.tolist(), self.bank.behaviour_threshold)
        }

    def set_thresholds(self, overrides: dict[str, float]) -> None:
        """Replace some concepts' activation thresholds (a threshold profile)."""
        for concept, value in overrides.items():
            self.thresholds[self.bank.index[concept]] = float(value)

    def with_thresholds(self, overrides: dict[str, float], reset: bool = False) -> Monitor:
        """A copy with some thresholds replaced (`reset`: starting from the pack's); this one is unchanged."""
        changed = copy.copy(self)
        changed.thresholds = (self.bank.act_threshold if reset else self.thresholds).clone()
        changed.set_thresholds(overrides)
        return changed

    def overrides(self) -> dict[str, float]:
        """Concepts whose threshold differs from the pack's, with their threshold now."""
        now, pack = self.thresholds.tolist(), self.bank.act_threshold.tolist()
        return {c: round(a, 4) for c, a, b in zip(self.bank.concepts, now, pack) if abs(a - b) > 1e-6}

    def score(self, hidden: torch.Tensor, window: torch.Tensor, tokens: list[str], start: int = 0) -> list[TokenRecord]:
        """Records for T tokens at once: hidden [T, d] at the tap, window [T, d] mean input embeddings."""
        return self.records(*self.bank.scores(hidden, window), tokens, range(start, start + len(tokens)))

    def records(
        self,
        act: torch.Tensor,
        text: torch.Tensor,
        div: torch.Tensor,
        tokens: list[str],
        indices: Sequence[int],
        rank: torch.Tensor | None = None,
    ) -> list[TokenRecord]:
        """Records for T tokens from their scores (`ProbeBank.scores`: act, text, div [T, N]); `indices[t]`
        is token t's position in its own text (tokens of several texts or streams can be scored together);
        `rank`: `ProbeBank.rank_score(act, text)` where the caller has it already."""
        fired = act >= self.thresholds
        parent_fired = _any_at(fired, self.parent_edges)
        eligible = self.always_eligible | parent_fired
        child_fired = _any_at(fired & eligible, self.child_edges)
        candidate = eligible & ~child_fired & self.bank.rankable
        if self.bank.calibrated:  # family-wise rule: report only what fires, ranked on the corpus scale
            candidate &= fired
        k = min(self.keep_top_k, act.shape[1])
        rank = self.bank.rank_score(act, text) if rank is None else rank
        ranked = torch.where(candidate, rank, torch.full_like(act, float("-inf")))
        top_rank, top_idx = ranked.topk(k, dim=1)
        top_act = torch.where(top_rank > float("-inf"), act.gather(1, top_idx), torch.full_like(top_rank, -1.0))
        top_div = div.gather(1, top_idx)
        rows = torch.stack([top_act, text.gather(1, top_idx), top_div], dim=-1)
        # the color: the divergence of largest magnitude among the reported concepts that fired
        fired_div = torch.where(top_act >= self.thresholds[top_idx], top_div, torch.zeros_like(top_div))
        color_of = fired_div.gather(1, fired_div.abs().argmax(1, keepdim=True))[:, 0]
        # three small copies to the host for the whole batch, rounded there (not per number in Python):
        # the k reported rows, their indices and each token's color
        rows_host, idx_host = _rounded(rows), top_idx.cpu().tolist()
        names, layers = self.bank.concepts, self.layer_of
        records = []
        for t, (token, top) in enumerate(zip(tokens, _rounded(color_of))):
            concepts = tuple(
                ConceptScore(names[i], layers[i], a, s, d)
                for i, (a, s, d) in zip(idx_host[t], rows_host[t])
                if a >= 0  # -1 marks a concept that was not a candidate
            )
            records.append(TokenRecord(indices[t], token, concepts, top, divergence_colour(top)))
        return records

    def top_concepts(self, best: torch.Tensor, top: int = TOP_CONCEPTS) -> list[list[tuple[str, float]]]:
        """Per response, its `top` concepts and their response-level scores, highest first, from its two
        highest per-token rank scores `best` [responses, 2, N] (hatcat/ranking.py; one copy to the host)."""
        score = own_evidence(response_level(best), self.parent_edges)
        values, idx = score.topk(min(top, score.shape[-1]), dim=-1)
        names = self.bank.concepts
        return [
            [(names[i], v) for i, v in zip(row_idx, row_val) if v > float("-inf")]
            for row_idx, row_val in zip(idx.cpu().tolist(), _rounded(values))
        ]


def _rounded(values: torch.Tensor) -> list:
    """`values` as nested Python floats rounded to 4 decimals (in float64, as `round(x, 4)` would)."""
    return values.double().round(decimals=4).cpu().tolist()


def _edges(lists: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(owner, member) index pairs of the non-empty lists: owner i, member j for each j in lists[i]."""
    owners = [i for i, members in enumerate(lists) for _ in members]
    members = [j for ms in lists for j in ms]
    return torch.tensor(owners, dtype=torch.long, device=device), torch.tensor(members, dtype=torch.long, device=device)


def _any_at(flags: torch.Tensor, edges: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """[T, N]: for each concept, whether any of its members (parents or children) is flagged.

    One gather and one scatter-add over the edges (cost T x edges), not a [T, N, widest list]
    gather: a concept with hundreds of children would make every token pay for that width."""
    owners, members = edges
    counts = torch.zeros(flags.shape, dtype=torch.float32, device=flags.device)
    return counts.index_add_(1, owners, flags[:, members].float()) > 0


class TextWindow:
    """The ids of the last `size` tokens read, updated one token at a time; `mean_embeddings` turns
    windows into the mean input embedding the words-only side reads."""

    def __init__(self, size: int = TEXT_WINDOW) -> None:
        self.ids: deque[int] = deque(maxlen=size)

    def push(self, token_ids: list[int]) -> None:
        self.ids.extend(token_ids)


def mean_embeddings(embed: torch.nn.Module, windows: list[TextWindow]) -> torch.Tensor:
    """[len(windows), d]: each window's mean input embedding (zeros for an empty window: words say
    nothing yet), from one embedding lookup for all of them (one copy to the device per step)."""
    width = max([len(w.ids) for w in windows] + [1])
    ids = torch.tensor([[*w.ids] + [0] * (width - len(w.ids)) for w in windows], device=embed.weight.device)
    counts = torch.tensor([len(w.ids) for w in windows], device=ids.device)
    real = torch.arange(width, device=ids.device)[None, :] < counts[:, None]  # [b, width]
    vectors = embed(ids).float() * real[..., None]
    return vectors.sum(1) / counts.clamp(min=1)[:, None]


def window_means(embeddings: torch.Tensor, size: int = TEXT_WINDOW) -> torch.Tensor:
    """For whole texts [..., T, d]: position t's mean over the embeddings t-size+1..t (as TextWindow)."""
    vectors = embeddings.float()
    csum = torch.cat([torch.zeros_like(vectors[..., :1, :]), vectors.cumsum(-2)], dim=-2)
    t = torch.arange(1, vectors.shape[-2] + 1, device=vectors.device)
    lo = (t - size).clamp(min=0)
    return (csum[..., t, :] - csum[..., lo, :]) / (t - lo).unsqueeze(1)


def summarise(records: list[TokenRecord], ranked: Sequence[tuple[str, float]] = ()) -> ResponseSummary:
    """Mean/max of the tokens' max divergence, and the top concepts in the order of `ranked`
    (`Monitor.top_concepts`: (concept, response-level score)), each with the tokens it was reported on."""
    if not records:
        return ResponseSummary(0, 0.0, 0.0)
    per_token = [r.max_divergence for r in records]
    seen: dict[str, list[float]] = defaultdict(list)
    for record in records:
        for c in record.concepts:
            seen[c.concept].append(c.divergence)
    top = tuple(
        ConceptSummary(c, len(seen[c]), round(sum(seen[c]) / len(seen[c]), 4) if seen[c] else 0.0, score)
        for c, score in ranked
    )
    return ResponseSummary(len(records), round(sum(per_token) / len(per_token), 4), round(max(per_token), 4), top)
