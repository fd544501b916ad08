from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.protocol.embeddings import EmbeddingRequest


def make(**fields: object) -> EmbeddingRequest:
    return EmbeddingRequest.model_validate({"model": "embed", **fields})


@pytest.mark.parametrize(
    "value",
    ["hello", ["a", "b"], [1, 2, 3], [[1, 2], [3]]],
    ids=["string", "strings", "token-array", "token-arrays"],
)
def test_every_openai_input_form_is_accepted_unchanged(value: object) -> None:
    assert make(input=value).input == value


@pytest.mark.parametrize("value", [5, None, [1.5, 2.5], {"text": "x"}, [["a"]]])
def test_other_input_shapes_are_rejected(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        make(input=value)

    assert info.value.errors()[0]["loc"][0] == "input"


def test_encoding_format_defaults_to_float() -> None:
    assert make(input="x").encoding_format == "float"


def test_encoding_format_base64_is_accepted_and_others_are_not() -> None:
    assert make(input="x", encoding_format="base64").encoding_format == "base64"
    with pytest.raises(ValidationError):
        make(input="x", encoding_format="int8")


def test_dimensions_must_be_positive() -> None:
    with pytest.raises(ValidationError):
        make(input="x", dimensions=0)
    assert make(input="x", dimensions=8).dimensions == 8


def test_unknown_fields_are_kept() -> None:
    assert make(input="x", truncate_prompt_tokens=16).model_dump()["truncate_prompt_tokens"] == 16


@pytest.mark.parametrize(
    ("value", "empty"),
    [
        ("", True),
        ([], True),
        ([[]], True),
        ([[1], []], True),
        (" ", False),
        ("text", False),
        (["a"], False),
        ([""], False),  # one (empty) string is still one input the engine answers for
        ([0], False),
        ([[0], [1, 2]], False),
    ],
)
def test_input_is_empty_detects_nothing_to_embed(value: object, empty: bool) -> None:
    assert make(input=value).input_is_empty() is empty
