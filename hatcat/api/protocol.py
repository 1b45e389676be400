"""Request and response models, fields in the order of OpenAI's API reference; HatCat's
extensions (`session_id`, `top_k`, `repetition_penalty`, `min_tokens`, `include_analysis`) come last.

Bounds live on the fields so that a bad value is a 400 naming the field and the OpenAPI
document tells clients (and the fuzzer) what is allowed; the sampling fields' bounds are
`hatcat.generation`'s annotated types, the ones `GenerationSettings` validates with.
`max_tokens`' upper bound is a setting (`HATCAT_MAX_TOKENS`): it is checked in the route and
written into the schema by `server.create_api`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hatcat.generation import (
    MaxTokens,
    MinTokens,
    RepetitionPenalty,
    Seed,
    StopText,
    Temperature,
    TopK,
    TopP,
)
from hatcat.steering import MAX_STRENGTH

MONITOR_MODEL_ID = "hatcat-divergence"
DEFAULT_SESSION = "default"
MAX_ANALYZE_CHARS = 20_000
MAX_ANALYZE_TEXTS = 256  # texts per /v1/analyze request
MAX_STOP_SEQUENCES = 4

SessionId = Annotated[
    str, Field(min_length=1, max_length=128, description="steering session; requests without one share `default`")
]
ConceptId = Annotated[str, Field(min_length=1, max_length=200)]


class _Request(BaseModel):
    # OpenAI clients send fields HatCat has no use for (user, logit_bias, ...): ignore them.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


# ---- chat completions ---------------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None


# A user message is the prompt: it needs text that is more than white space.
Text = Annotated[str, Field(pattern=r"\S")]


class UserTextPart(BaseModel):
    type: Literal["text"]
    text: Text


class UserMessage(_Request):
    role: Literal["user"]
    content: Text | Annotated[list[UserTextPart], Field(min_length=1)]
    name: str | None = None


Message = Annotated[UserMessage | ChatMessage, Field(discriminator="role")]
HAS_USER_MESSAGE = {"contains": {"type": "object", "properties": {"role": {"const": "user"}}, "required": ["role"]}}


class StreamOptions(_Request):
    include_usage: bool = False


class ChatCompletionRequest(_Request):
    messages: list[Message] = Field(
        min_length=1, description="at least one user message", json_schema_extra=HAS_USER_MESSAGE
    )
    model: str = Field(MONITOR_MODEL_ID, min_length=1, max_length=200)
    max_completion_tokens: MaxTokens | None = Field(None, description="alias of max_tokens")
    max_tokens: MaxTokens | None = Field(None, description="at most HATCAT_MAX_TOKENS")
    n: int = Field(1, ge=1, le=1, description="only one choice per request")
    seed: Seed | None = Field(None, description="same seed, same text")
    stop: StopText | list[StopText] | None = Field(None, max_length=MAX_STOP_SEQUENCES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = Field(None, description="0 = greedy; default 0.7")
    top_p: TopP | None = None
    user: str | None = None
    # HatCat extensions
    top_k: TopK = Field(0, description="0 = off")
    repetition_penalty: RepetitionPenalty = Field(1.0, description="1 = off")
    min_tokens: MinTokens = Field(0, description="end-of-sequence held back until this many tokens (vLLM's)")
    session_id: SessionId = DEFAULT_SESSION
    include_analysis: bool = Field(
        True, description="stream the response-level analysis line as content after the last token"
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ConceptDivergence(BaseModel):
    concept: str
    layer: int
    activation: float
    text_similarity: float
    divergence: float


class TokenDivergence(BaseModel):
    max_divergence: float
    top_divergences: list[ConceptDivergence]


class TokenReport(BaseModel):
    index: int
    token: str
    color: str
    divergence: TokenDivergence


class SteeringOut(BaseModel):
    concept: str
    strength: float
    layer: int | None
    session_id: str


class SteeringState(BaseModel):
    active: bool
    steerings: list[SteeringOut]


class ConceptTotal(BaseModel):
    concept: str
    tokens: int  # tokens where it fired
    mean_divergence: float  # over those tokens
    score: float  # the response-level rank score (hatcat/ranking.py): the order of `top_concepts`


class ResponseDivergence(BaseModel):
    """`metadata.divergence` of the analysis chunk: the whole response's."""

    max_divergence: float
    mean_divergence: float
    top_concepts: list[ConceptTotal]


class ChunkMetadata(BaseModel):
    """HatCat's per-chunk extension (`choices[0].delta.metadata`); token chunks add `color` and
    `token_index`, the analysis chunk `analysis` and `analysis_line`."""

    monitoring: bool
    divergence: TokenDivergence | ResponseDivergence | None
    steering: SteeringState
    color: str | None = None
    token_index: int | None = None
    analysis: dict[str, Any] | None = None
    analysis_line: str | None = None


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    metadata: ChunkMetadata


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    """One SSE event of a streamed chat completion; `sse()` is the one place chunks are serialised
    (optional fields that were not set are left out, as OpenAI does)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None

    def sse(self) -> str:
        return f"data: {self.model_dump_json(exclude_unset=True)}\n\n"


class HatCatReport(BaseModel):
    """The non-streaming answer's extra field: what the stream carries in its metadata."""

    monitoring: bool
    probe_pack: str | None
    tokens: list[TokenReport]
    analysis: dict[str, Any] | None
    analysis_line: str | None
    steering: SteeringState


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    hatcat: HatCatReport


# ---- models ---------------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "hatcat"
    probe_pack: str | None = None
    loaded: bool = True


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- steering -----------------------------------------------------------------------------


class SteeringAdd(_Request):
    concept: ConceptId
    strength: float = Field(
        ge=-MAX_STRENGTH, le=MAX_STRENGTH, description="in units of the layer's typical hidden-state norm"
    )
    layer: int | None = Field(None, ge=0, le=1000, description="decoder block; default: the probe pack's tap layer")
    session_id: SessionId = DEFAULT_SESSION


class SteeringUpdate(_Request):
    strength: float | None = Field(None, ge=-MAX_STRENGTH, le=MAX_STRENGTH)
    layer: int | None = Field(None, ge=0, le=1000)
    session_id: SessionId = DEFAULT_SESSION


class SteeringList(BaseModel):
    session_id: str
    steerings: list[SteeringOut]


class SteeringCleared(BaseModel):
    session_id: str
    removed: int


# ---- analyze ------------------------------------------------------------------------------


AnalyzeText = Annotated[str, Field(min_length=1, max_length=MAX_ANALYZE_CHARS)]


class AnalyzeRequest(_Request):
    text: AnalyzeText | None = Field(None, description="one text (answered with one `analysis`)")
    input: AnalyzeText | list[AnalyzeText] | None = Field(
        None,
        description=f"a text or a list of at most {MAX_ANALYZE_TEXTS} texts, scored in padded batches "
        "(answered with a `list` of analyses, as OpenAI's embeddings); give `text` or `input`",
    )
    concepts: list[ConceptId] | None = Field(
        None, min_length=1, max_length=1000, description="concepts to summarise; default: the top_k by max divergence"
    )
    top_k: int = Field(10, ge=1, le=1000)

    @model_validator(mode="after")
    def _one_input(self) -> AnalyzeRequest:
        if (self.text is None) == (self.input is None):
            raise ValueError("give exactly one of `text` (one text) or `input` (a text or a list of texts)")
        if isinstance(self.input, list) and not 1 <= len(self.input) <= MAX_ANALYZE_TEXTS:
            raise ValueError(f"`input` must hold 1 to {MAX_ANALYZE_TEXTS} texts, got {len(self.input)}")
        return self

    @property
    def texts(self) -> list[str]:
        if self.text is not None:
            return [self.text]
        return self.input if isinstance(self.input, list) else [self.input]


class ConceptStats(BaseModel):
    """One concept over the analysed text; `last_*` is the state after the whole text."""

    concept: str
    layer: int
    max_activation: float
    mean_activation: float = Field(
        description='the response-level score (chosen on dev data, results/recipe_compare.json): answers "is this text about X"'
    )
    last_activation: float = Field(description="the state after the whole text")
    max_text_similarity: float
    mean_text_similarity: float
    last_text_similarity: float
    max_divergence: float
    mean_divergence: float
    last_divergence: float


class Analysis(BaseModel):
    object: Literal["analysis"] = "analysis"
    probe_pack: str
    tokens: list[TokenReport]
    concepts: list[ConceptStats]
    summary: dict[str, Any]
    summary_line: str
    usage: Usage
    index: int | None = Field(None, description="position in `input` (list answers only)")


class AnalysisList(BaseModel):
    object: Literal["list"] = "list"
    probe_pack: str
    data: list[Analysis]
    usage: Usage


# ---- the record store -------------------------------------------------------------------------


class ProfileBody(_Request):
    thresholds: dict[ConceptId, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(max_length=100_000)


class ReviewBody(_Request):
    ids: list[Annotated[int, Field(ge=1, le=2**62)]] = Field(min_length=1, max_length=10_000)
    review: Literal["reviewed", "true_positive", "false_positive"]
