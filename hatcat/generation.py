"""Generation's settings, typed events and text side; the Scheduler (`hatcat.batching`) is the one decoder.

    generation = engine.generate(prompt, GenerationSettings(max_tokens=64, temperature=0, stop=("\\n\\n",)))
    for event in generation:
        if isinstance(event, MonitoredToken):
            ...  # event.step.text, event.record (None without a probe pack) -> SSE chunk, trace
        else:
            ...  # MonitoredFinish: finish_reason, usage, full text, the response summary

Per token the scheduler draws ids (`hatcat.sampling`) and hands each row's id to its `Decoder`:
incremental detokenizing (`tokenizers`' `DecodeStream`), stop sequences (text that could begin one
is held back until it cannot), end-of-sequence and the length limit. The bounds of every setting
live here once, as annotated types that the API's request schema uses too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, TypeAdapter, ValidationError
from tokenizers.decoders import DecodeStream
from torch import nn
from transformers import PreTrainedTokenizerBase

from hatcat.errors import InvalidValue

if TYPE_CHECKING:
    from hatcat.monitor import ResponseSummary, TokenRecord

# OpenAI's ranges, so that the API layer can pass a request's fields straight through.
MAX_TEMPERATURE = 2.0
MaxTokens = Annotated[int, Field(ge=1)]
Temperature = Annotated[float, Field(ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
TopK = Annotated[int, Field(ge=0, le=1000)]
RepetitionPenalty = Annotated[float, Field(gt=0.0, le=10.0, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=-(2**53), le=2**53)]
MinTokens = Annotated[int, Field(ge=0)]
StopText = Annotated[str, Field(min_length=1)]
_RULES = {
    name: TypeAdapter(kind)
    for name, kind in {
        "max_tokens": MaxTokens,
        "temperature": Temperature,
        "top_p": TopP,
        "top_k": TopK,
        "repetition_penalty": RepetitionPenalty,
        "seed": Seed | None,
        "min_tokens": MinTokens,
        "stop": tuple[StopText, ...],
    }.items()
}


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
        elif isinstance(self.stop, Iterable):
            object.__setattr__(self, "stop", tuple(self.stop))
        for name, rule in _RULES.items():
            try:
                rule.validate_python(getattr(self, name), strict=True)
            except ValidationError as err:
                raise InvalidValue(
                    f"{name}: {err.errors()[0]['msg']}, got {getattr(self, name)!r}", param=name
                ) from None
        if self.min_tokens > self.max_tokens:
            raise InvalidValue(
                f"min_tokens must be an integer in [0, max_tokens={self.max_tokens}], got {self.min_tokens!r}",
                param="min_tokens",
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class TokenStep:
    """One generated token.

    `text` is the new piece of output text this token releases; the concatenation of all steps'
    texts is exactly `Finished.text`. A piece can be empty (a special token, half of a multi-byte
    character whose rest arrives with the next token) or trimmed (the token where a stop sequence
    begins).
    """

    index: int
    token_id: int
    text: str


@dataclass
class Finished:
    """The end of a generation: why it stopped, usage and the full output text."""

    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int  # tokens the model generated, counting an EOS and a stop sequence's tokens
    text: str


@dataclass(frozen=True)
class MonitoredToken:
    """A generated token and what the monitor saw on it (None without a probe pack). Token k's record
    reads the tap state that produced token k and the words up to token k-1."""

    step: TokenStep
    record: TokenRecord | None


@dataclass(frozen=True)
class MonitoredFinish:
    """The end of a generation and the response summary (None without a probe pack)."""

    finished: Finished
    summary: ResponseSummary | None


class Decoder:
    """One generation's text side, token by token: detokenizing, stop sequences, end-of-sequence
    (not emitted as a step) and the length limit (finish_reason "length"). `push` returns the steps
    a token releases, in order and with their final text, and the `Finished` event when the
    generation ended with it."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, settings: GenerationSettings, eos: set[int], prompt: int, room: int
    ) -> None:
        self.detok, self.stops = Detokenizer(tokenizer), StopHoldback(settings.stop)
        self.eos, self.prompt, self.room = eos, prompt, room
        self.generated = 0

    def push(self, token: int) -> tuple[list[TokenStep], Finished | None]:
        self.generated += 1
        if token in self.eos:
            return list(self.stops.flush(self.detok.flush())), self._finished("stop")
        piece = self.detok.add(token)
        last = self.generated >= self.room
        if last:
            piece += self.detok.flush()
        steps = list(self.stops.add(TokenStep(self.generated - 1, token, piece), self.detok.pending))
        if self.stops.matched:
            return steps, self._finished("stop")
        if last:
            return steps + list(self.stops.flush("")), self._finished("length")
        return steps, None

    def _finished(self, reason: Literal["stop", "length"]) -> Finished:
        return Finished(reason, self.prompt, self.generated, self.stops.emitted_text)


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


class Detokenizer:
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


class StopHoldback:
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
