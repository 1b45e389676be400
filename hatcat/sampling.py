"""Sampling: each row's next token from its logits, for one row or a whole batch at once.

`Sampler` holds one request's sampling state (its settings, seeded generator, the ids the
repetition penalty reads); `draw_rows` draws every row of a batch in one pass, so a request gets
the same token alone or inside any batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from hatcat.generation import GenerationSettings

# The sampler's floor on temperature: below it any gap between float32 logits already gives probability 0.
MIN_WARP_TEMPERATURE = 1e-30


class Sampler:
    """transformers' logits processors in HF's order (repetition penalty, temperature, top-k, top-p),
    then argmax (greedy) or a seeded draw. The scores are shifted to a maximum of 0 before warping
    and the temperature is floored at `MIN_WARP_TEMPERATURE`, so any accepted temperature or penalty
    gives scores that are finite or -inf, never NaN. `eos` ids are held back for the first
    `settings.min_tokens` draws."""

    def __init__(
        self, settings: GenerationSettings, prompt: torch.Tensor, eos: set[int] | frozenset = frozenset()
    ) -> None:
        self.settings = settings
        self.ids = prompt  # [1, n]: the prompt and the output so far (read by the repetition penalty)
        self.eos = torch.tensor(sorted(eos), dtype=torch.long, device=prompt.device)
        self.drawn = 0
        self.penalty = (
            RepetitionPenaltyLogitsProcessor(float(settings.repetition_penalty))
            if settings.repetition_penalty != 1.0
            else None
        )
        self.warpers = LogitsProcessorList()
        if not settings.greedy:
            self.warpers.append(TemperatureLogitsWarper(max(float(settings.temperature), MIN_WARP_TEMPERATURE)))
            if settings.top_k:
                self.warpers.append(TopKLogitsWarper(settings.top_k))
            if settings.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(settings.top_p))  # always keeps the most likely token
        self.generator = torch.Generator(device=prompt.device)
        if settings.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(settings.seed & 0xFFFF_FFFF_FFFF_FFFF)

    @property
    def plain(self) -> bool:
        """Greedy or a temperature alone, no penalty: drawn with the batch's other plain rows."""
        return self.penalty is None and not self.settings.top_k and self.settings.top_p >= 1.0

    def sample(self, logits: torch.Tensor) -> int:
        """The next token for one row's logits [V] (`draw_rows` for a batch of one)."""
        return int(draw_rows([self], logits[None]).item())

    def warped(self, scores: torch.Tensor) -> torch.Tensor:
        """A non-plain row's scores [1, V] through its penalty and warpers (shifted to a maximum of 0)."""
        if self.penalty is not None:
            # a tiny penalty overflows positive logits to inf: keep them finite so the shift stays a number
            bound = torch.finfo(scores.dtype).max
            scores = self.penalty(self.ids, scores).clamp(-bound, bound)
        return self.warpers(self.ids, scores - scores.max()) if not self.settings.greedy else scores

    def drew(self, token: torch.Tensor) -> None:
        if self.penalty is not None:
            self.ids = torch.cat([self.ids, token.reshape(1, 1).to(self.ids.device)], dim=1)
        self.drawn += 1


@torch.inference_mode()
def draw_rows(samplers: list[Sampler], logits: torch.Tensor) -> torch.Tensor:
    """Each row's next token [B] from its logits [B, V] and its own sampler, without waiting for the
    device. Plain rows (greedy, or a temperature alone) are drawn together: one argmax, or one
    softmax and one cumulative sum over the batch, each row with its own seeded uniform; the others
    row by row through transformers' processors. A row gets the same token alone or in any batch
    (up to the logits' own float differences), since both take this path."""
    scores = logits.float()
    held = [i for i, s in enumerate(samplers) if s.drawn < s.settings.min_tokens and s.eos.numel()]
    if held:  # end-of-sequence held back (min_tokens), on a copy: the caller's logits stay as they were
        scores = scores.clone()
        for i in held:
            scores[i, samplers[i].eos] = float("-inf")
    tokens = torch.empty(len(samplers), dtype=torch.long, device=logits.device)
    greedy = [i for i, s in enumerate(samplers) if s.plain and s.settings.greedy]
    if greedy:
        tokens[greedy] = scores[greedy].argmax(-1)
    warm = [i for i, s in enumerate(samplers) if s.plain and not s.settings.greedy]
    if warm:
        rows = scores[warm]
        temperature = rows.new_tensor([[max(samplers[i].settings.temperature, MIN_WARP_TEMPERATURE)] for i in warm])
        weights = torch.exp((rows - rows.amax(-1, keepdim=True)) / temperature)  # softmax, unnormalised
        tokens[warm] = _inverse_cdf(weights, [samplers[i].generator for i in warm])
    for i, sampler in enumerate(samplers):
        if not sampler.plain:
            warped = sampler.warped(scores[i : i + 1])
            if sampler.settings.greedy:
                tokens[i] = warped.argmax()
            else:
                tokens[i] = _inverse_cdf(torch.exp(warped), [sampler.generator])[0]
        sampler.drew(tokens[i])
    return tokens


def _inverse_cdf(weights: torch.Tensor, generators: list[torch.Generator], block: int = 512) -> torch.Tensor:
    """One draw per row [b] with probability proportional to `weights` [b, V] (>= 0, finite, a
    positive one per row): the first token whose cumulative weight exceeds the row's seeded uniform
    share of the total. Exact (sums in float64), never a token of weight 0, and a fortieth of
    `torch.multinomial`'s cost over a 262k vocabulary (which draws an exponential per token): the
    cumulative sum runs over `block`-token block totals, then inside the one block drawn."""
    rows, vocab = weights.shape
    blocks = F.pad(weights, (0, -vocab % block)).view(rows, -1, block)
    totals = blocks.sum(-1, dtype=torch.float64).cumsum(-1)  # [b, blocks]
    u = torch.cat([torch.rand(1, dtype=totals.dtype, device=totals.device, generator=g) for g in generators])
    share = u * totals[:, -1]
    k = torch.searchsorted(totals, share[:, None], right=True)[:, 0].clamp_(max=totals.shape[1] - 1)
    before = torch.where(k > 0, totals.gather(1, (k - 1).clamp(min=0)[:, None])[:, 0], 0.0)
    inside = blocks[torch.arange(rows, device=k.device), k].double().cumsum(-1)  # [b, block]
    j = torch.searchsorted(inside, (share - before)[:, None], right=True)[:, 0]
    # float rounding can put the share past the block's own sum: then the block's last token of weight > 0
    last = (inside < inside[:, -1:]).sum(-1)
    return k * block + torch.minimum(j, last)
