"""Errors map to the API's shape by type, and the request schemas hold OpenAI's bounds (no model)."""

from __future__ import annotations

import pydantic
import pytest

from hatcat.api.errors import APIError, as_body
from hatcat.api.protocol import ChatCompletionRequest, SteeringAdd
from hatcat.concepts import ConceptPackError
from hatcat.config import ConfigError
from hatcat.errors import ContextLengthExceeded, HatCatError
from hatcat.generation import GenerationSettings
from hatcat.probes import ProbePackError
from hatcat.steering import Steering, UnknownConcept


@pytest.mark.parametrize(
    ("error", "status", "code", "param"),
    [
        (UnknownConcept("Zebra"), 404, "concept_not_found", "concept"),
        (ContextLengthExceeded("prompt is 9 tokens", param="messages"), 400, "context_length_exceeded", "messages"),
        (ProbePackError("corrupt"), 400, "invalid_probe_pack", None),
        (ConceptPackError("bad meld"), 400, "invalid_concept_pack", None),
        (ConfigError("HATCAT_PORT='x' is not an integer"), 400, "invalid_setting", None),
        (APIError(409, "no probe pack", code="no_probe_pack"), 409, "no_probe_pack", None),
    ],
)
def test_every_hatcat_error_carries_its_status_code_and_param(
    error: HatCatError, status: int, code: str, param: str | None
) -> None:
    body = as_body(error)["error"]
    assert (error.status, body["code"], body["param"]) == (status, code, param)
    assert body["message"] == str(error) and "'" not in str(error)[:1]  # a KeyError subclass is not quoted


def test_an_unexpected_exception_is_a_500_internal_error() -> None:
    body = as_body(RuntimeError("boom"))["error"]
    assert (body["type"], body["code"]) == ("server_error", "internal_error")


@pytest.mark.parametrize(("field", "value"), [("top_p", 0.0), ("max_tokens", 0), ("seed", "x")])
def test_invalid_generation_settings_name_their_field_as_param(field: str, value: object) -> None:
    with pytest.raises(HatCatError) as err:
        GenerationSettings(**{field: value})
    assert err.value.param == field and err.value.status == 400


def test_steering_strength_out_of_range_is_an_invalid_value() -> None:
    with pytest.raises(HatCatError) as err:
        Steering("Music", 99.0)
    assert err.value.param == "strength"


def test_chat_request_takes_openai_fields_ignores_unknown_ones_and_refuses_bad_bounds() -> None:
    body = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], logit_bias={"1": 2}, stop="\n")
    assert body.model == "hatcat-divergence" and body.stop == "\n" and body.session_id == "default"
    for bad in ({"temperature": 2.5}, {"n": 2}, {"top_p": 0}, {"stop": ["a", "b", "c", "d", "e"]}, {"messages": []}):
        with pytest.raises(pydantic.ValidationError):
            ChatCompletionRequest(**{"messages": [{"role": "user", "content": "hi"}], **bad})
    with pytest.raises(pydantic.ValidationError):
        SteeringAdd(concept="Music", strength=10.0)
