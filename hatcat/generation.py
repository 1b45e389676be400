"""Streaming decode: a KV-cached loop that yields one typed event per token.

In the style of simonw/llm, generation is a generator of events and the non-streaming path
just collects it:

    settings = GenerationSettings(max_tokens=64, temperature=0, stop=("\\n\\n",))
    prompt = "Hi"  # chat messages become a prompt in the API layer (`hatcat.api.prompt`)
    for event in generate(model, tokenizer, prompt, settings, tap_layer=12):
        if isinstance(event, TokenStep):
            ...  # event.text, event.hidden -> probes, monitor, SSE chunk
        else:
            ...  # Finished: finish_reason, usage, full text
    text, steps, finished = collect(generate(...))

Cost: one forward pass over the prompt, then one single-token forward per generated token
(the model's own KV cache, `logits_to_keep=1`), one forward hook at the tap layer for the whole
generation, one `.item()` per token for the sampled id. Sampling uses transformers' logits
processors, incremental detokenizing `tokenizers`' `DecodeStream`. The caller holds the model exclusively
(`Engine.exclusive()`): the hook stays on the tap layer until the generator finishes or is closed.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from tokenizers.decoders import DecodeStream
from torch import nn
from transformers import (
    LogitsProcessorList,
    PreTrainedTokenizerBase,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from hatcat.errors import InvalidValue
from hatcat.model import check_context, context_length, decoder_layers
from hatcat.tap import Edit, tap

# OpenAI's ranges, so that the API layer can pass a request's fields straight through.
MAX_TEMPERATURE = 2.0
# The sampler's floor on temperature: below it any gap between float32 logits already gives probability 0.
MIN_WARP_TEMPERATURE = 1e-30


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling and stopping controls; invalid values raise InvalidValue naming the field.

    temperature 0 means greedy decoding (argmax); top_k 0 turns top-k off; top_p 1 turns
    nucleus sampling off; repetition_penalty 1 is no penalty (HF semantics: a logit of a token
    already in the prompt or output is divided by it when positive, multiplied when negative);
    seed None draws a fresh random seed; stop holds strings that end the text (not included);
    min_tokens holds end-of-sequence tokens back until that many tokens are out (vLLM's
    `min_tokens`; benchmarks use it for fixed-length streams).
    """

    max_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    min_tokens: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # a single string, as OpenAI's `stop` also allows
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop) if isinstance(self.stop, Iterable) else self.stop)
        checks = (
            ("max_tokens", _is_int(self.max_tokens) and self.max_tokens >= 1, "an integer >= 1"),
            (
                "temperature",
                _is_number(self.temperature) and 0.0 <= self.temperature <= MAX_TEMPERATURE,
                f"a number in [0, {MAX_TEMPERATURE:g}] (0 = greedy)",
            ),
            ("top_p", _is_number(self.top_p) and 0.0 < self.top_p <= 1.0, "a number in (0, 1]"),
            ("top_k", _is_int(self.top_k) and self.top_k >= 0, "an integer >= 0 (0 = off)"),
            (
                "repetition_penalty",
                _is_number(self.repetition_penalty) and 0.0 < self.repetition_penalty <= 10.0,
                "a number in (0, 10] (1 = off)",
            ),
            ("seed", self.seed is None or _is_int(self.seed), "an integer or null"),
            (
                "min_tokens",
                _is_int(self.min_tokens) and 0 <= self.min_tokens <= self.max_tokens,
                f"an integer in [0, max_tokens={self.max_tokens}]",
            ),
            (
                "stop",
                isinstance(self.stop, tuple) and all(isinstance(s, str) and s for s in self.stop),
                "a string or a list of non-empty strings",
            ),
        )
        for name, ok, allowed in checks:
            if not ok:
                raise InvalidValue(f"{name} must be {allowed}, got {getattr(self, name)!r}", param=name)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class TokenStep:
    """One generated token.

    `text` is the new piece of output text this token releases; the concatenation of all steps'
    texts is exactly `Finished.text`. A piece can be empty (a special token, half of a multi-byte
    character whose rest arrives with the next token) or trimmed (the token where a stop sequence
    begins). `hidden` is the tap layer's state at the position whose logits produced this token
    ([hidden], model dtype, on the model's device; see `generate`).
    """

    index: int
    token_id: int
    text: str
    hidden: torch.Tensor = field(repr=False)


@dataclass
class Finished:
    """The end of a generation: why it stopped, usage and the full output text."""

    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int  # tokens the model generated, counting an EOS and a stop sequence's tokens
    text: str


Event = TokenStep | Finished


def stop_token_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Token ids that end a generation: the tokenizer's and the generation config's EOS, and
    Gemma's `<end_of_turn>` (chat turns end there) when the vocabulary has it."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        ids.add(end_of_turn)
    return ids


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Prompt token ids. A prompt that already starts with the BOS text (a chat template's
    output) is not given a second BOS; a plain prompt gets the tokenizer's special tokens."""
    bos = tokenizer.bos_token
    add_special = not (isinstance(bos, str) and bos and prompt.startswith(bos))
    return list(tokenizer(prompt, add_special_tokens=add_special).input_ids)


def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    settings: GenerationSettings,
    tap_layer: int,
    edit: Edit | None = None,
) -> Iterator[Event]:
    """Stream a completion of `prompt`: TokenStep events, then one Finished event.

    Which hidden state belongs to a token: step k's `hidden` is the tap layer's state at the
    position whose logits produced token k (for the first token, the last prompt position; for
    token k > 0, the position where token k-1 was fed in). It is what the model held when it chose
    the token, it comes out of the very forward pass that computed the token's logits, so a
    generation costs exactly one forward per token (the last token is never fed back in), and
    it is what the original read (the last position's hidden state before appending the token).

    `edit` (a steering function on the tap layer's [batch, seq, hidden] output) is applied on
    every forward, prompt included; `hidden` is the state after the edit.

    Stops at an EOS token (see `stop_token_ids`; not emitted as a step), at `max_tokens` or the
    model's context length (finish_reason "length"), or when a stop sequence appears in the text
    (finish_reason "stop"; the sequence and anything after it are not emitted: text that could
    be the beginning of a stop sequence is held back until it cannot). Closing the generator
    (or breaking out of a loop over it) ends the generation and removes the tap hook.
    """
    if not isinstance(prompt, str):
        raise InvalidValue(f"prompt must be a string, got {type(prompt).__name__}", param="prompt")
    prompt_ids = encode_prompt(tokenizer, prompt)
    if not prompt_ids:
        raise InvalidValue("prompt is empty: it encodes to no tokens", param="prompt")
    check_context(model, len(prompt_ids), "prompt", room=1)
    context = context_length(model)
    layers = len(decoder_layers(model))
    if not -layers <= tap_layer < layers:
        raise InvalidValue(f"tap_layer {tap_layer} is out of range: the model has {layers} decoder layers")
    device = next(model.parameters()).device
    max_new = settings.max_tokens if context is None else min(settings.max_tokens, context - len(prompt_ids))
    eos = stop_token_ids(model, tokenizer)
    return _decode_loop(model, tokenizer, prompt_ids, settings, tap_layer, edit, device, max_new, eos)


def _decode_loop(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[int],
    settings: GenerationSettings,
    tap_layer: int,
    edit: Edit | None,
    device: torch.device,
    max_new: int,
    eos: set[int],
) -> Iterator[Event]:
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    sampler = _Sampler(settings, input_ids, eos)
    detok = _Detokenizer(tokenizer)
    stops = _StopHoldback(settings.stop)
    # Recent transformers name the KV-cache argument `cache` (`past_key_values` before).
    cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = None
    generated = 0
    with tap(model, tap_layer, edit=edit) as seen:
        while True:
            logits, cache = _forward(model, input_ids, cache, cache_kwarg)
            hidden = seen.hidden
            assert hidden is not None, "the tap layer did not run"
            # [hidden] at the last position; clone the prompt's row so the whole prompt's states are freed.
            hidden = hidden[0, -1].clone() if generated == 0 else hidden[0, -1]
            token = sampler.sample(logits)
            generated += 1
            if token in eos:
                yield from stops.flush(detok.flush())
                yield _finish("stop", prompt_ids, generated, stops)
                return
            piece = detok.add(token)
            last = generated >= max_new
            if last:
                piece += detok.flush()
            yield from stops.add(TokenStep(generated - 1, token, piece, hidden), detok.pending)
            if stops.matched:
                yield _finish("stop", prompt_ids, generated, stops)
                return
            if last:
                yield from stops.flush("")
                yield _finish("length", prompt_ids, generated, stops)
                return
            input_ids = torch.tensor([[token]], dtype=torch.long, device=device)


def _finish(reason: Literal["stop", "length"], prompt_ids: list[int], generated: int, stops: _StopHoldback) -> Finished:
    return Finished(reason, len(prompt_ids), generated, stops.emitted_text)


@torch.inference_mode()
def _forward(model: nn.Module, input_ids: torch.Tensor, cache: object, cache_kwarg: str) -> tuple[torch.Tensor, object]:
    """One cached forward; returns the last position's logits (fp32, [vocab]) and the cache.

    Inference mode is entered per forward, never across a `yield`, so the consumer's code between
    tokens does not run in inference mode."""
    out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **{cache_kwarg: cache})
    new_cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    return out.logits[0, -1].float(), new_cache


class _Sampler:
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

    def _warped(self, scores: torch.Tensor) -> torch.Tensor:
        """A non-plain row's scores [1, V] through its penalty and warpers (shifted to a maximum of 0)."""
        if self.penalty is not None:
            # a tiny penalty overflows positive logits to inf: keep them finite so the shift stays a number
            bound = torch.finfo(scores.dtype).max
            scores = self.penalty(self.ids, scores).clamp(-bound, bound)
        return self.warpers(self.ids, scores - scores.max()) if not self.settings.greedy else scores

    def _drew(self, token: torch.Tensor) -> None:
        if self.penalty is not None:
            self.ids = torch.cat([self.ids, token.reshape(1, 1).to(self.ids.device)], dim=1)
        self.drawn += 1


@torch.inference_mode()
def draw_rows(samplers: list[_Sampler], logits: torch.Tensor) -> torch.Tensor:
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
            warped = sampler._warped(scores[i : i + 1])
            if sampler.settings.greedy:
                tokens[i] = warped.argmax()
            else:
                tokens[i] = _inverse_cdf(torch.exp(warped), [sampler.generator])[0]
        sampler._drew(tokens[i])
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


class _Detokenizer:
    """Incremental decoding with tokenizers' `DecodeStream`: each token's new text, "" while a
    multi-byte character is incomplete (its text comes with a later token) or for a skipped special
    token, so the pieces concatenate to the full decoded text."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.stream = DecodeStream(skip_special_tokens=True)
        self.held: list[int] = []  # ids whose text has not come out yet

    def add(self, token: int) -> str:
        piece = self.stream.step(self.tokenizer.backend_tokenizer, token)
        if piece is None:
            self.held.append(token)
            return ""
        self.held = []
        return piece

    @property
    def pending(self) -> bool:
        """True while some tokens' text has not come out yet."""
        return bool(self.held)

    def flush(self) -> str:
        """Whatever text the held-back tokens decode to, even if incomplete."""
        text = self.tokenizer.decode(self.held, skip_special_tokens=True) if self.held else ""
        self.held = []
        return text


class _StopHoldback:
    """Holds steps back while their text could begin a stop sequence; trims at a match.

    Steps come out whole and in order; a step is released once no stop sequence can start
    inside or before its text (and the detokenizer has caught up), so the consumer never sees
    text that a stop sequence later takes back. Only held text needs searching: released text
    was, by construction, no prefix of a stop sequence."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self.stop = stop
        self.longest = max((len(s) for s in stop), default=0)
        self.held: list[TokenStep] = []
        self.emitted: list[str] = []
        self.matched = False

    @property
    def emitted_text(self) -> str:
        return "".join(self.emitted)

    def add(self, step: TokenStep, decoder_pending: bool) -> Iterator[TokenStep]:
        self.held.append(step)
        text = "".join(s.text for s in self.held) if self.stop else ""
        match = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if match >= 0:
            self.matched = True
            yield from self._release_before(match, trim=True)
        elif not decoder_pending:
            yield from self._release_before(self._safe_end(text) if self.stop else None)

    def _safe_end(self, text: str) -> int:
        """The earliest position where a stop sequence could still begin (len(text) if none)."""
        for start in range(max(0, len(text) - self.longest + 1), len(text)):
            if any(s.startswith(text[start:]) for s in self.stop):
                return start
        return len(text)

    def _release_before(self, position: int | None, trim: bool = False) -> Iterator[TokenStep]:
        """Release the held steps whose text ends by `position` (all when None). With `trim` (a
        stop sequence begins at `position`), the step it begins in keeps only the text before it
        (and is dropped when none remains) and every later step is dropped."""
        release: list[TokenStep] = []
        end = 0
        for step in self.held:
            start, end = end, end + len(step.text)
            if position is None or end <= position:
                release.append(step)
                continue
            if trim and position > start:
                step.text = step.text[: position - start]
                release.append(step)
            break
        self.held = [] if trim else self.held[len(release) :]
        for step in release:
            self.emitted.append(step.text)
            yield step

    def flush(self, tail: str) -> Iterator[TokenStep]:
        """Release every held step (the generation ended without a stop sequence)."""
        if tail and self.held:
            self.held[-1].text += tail
        yield from self._release_before(None)


def collect(events: Iterable[Event]) -> tuple[str, list[TokenStep], Finished]:
    """Run a generation to its end: (text, steps, finished) for the non-streaming path."""
    steps: list[TokenStep] = []
    finished: Finished | None = None
    for event in events:
        if isinstance(event, TokenStep):
            steps.append(event)
        else:
            finished = event
    if finished is None:
        raise RuntimeError("the generation ended without a Finished event")
    return finished.text, steps, finished
