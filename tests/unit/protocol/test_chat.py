from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.protocol.chat import ChatCompletionRequest

MESSAGES = [{"role": "user", "content": "hi"}]


def make(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "chat", "messages": MESSAGES, **fields})


def test_unknown_fields_are_kept_for_the_engine() -> None:
    request = make(top_k=40, min_p=0.05, guided_json={"type": "object"})

    dumped = request.model_dump(exclude_unset=True)
    assert dumped["top_k"] == 40
    assert dumped["min_p"] == 0.05
    assert dumped["guided_json"] == {"type": "object"}


def test_unknown_fields_inside_messages_are_kept() -> None:
    request = make(messages=[{"role": "assistant", "content": None, "tool_calls": [{"id": "t1"}]}])

    assert request.messages[0].model_dump(exclude_unset=True)["tool_calls"] == [{"id": "t1"}]


def test_defaults_are_not_streaming_and_one_choice() -> None:
    request = make()

    assert request.stream is False
    assert request.n == 1
    assert request.max_tokens is None


def test_content_may_be_a_list_of_parts() -> None:
    parts = [{"type": "text", "text": "hello"}]

    assert make(messages=[{"role": "user", "content": parts}]).messages[0].content == parts


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"model": ""}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"stop": 3}, "stop"),
    ],
)
def test_out_of_bounds_values_are_rejected_naming_the_field(fields: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        make(**fields)

    assert info.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize(
    "fields",
    [
        {"max_tokens": 1},
        {"n": 128},
        {"temperature": 0},
        {"temperature": 2},
        {"top_p": 1},
        {"stop": ["a", "b"]},
    ],
)
def test_values_on_the_bounds_are_accepted(fields: dict[str, object]) -> None:
    request = make(**fields)

    for name, value in fields.items():
        assert getattr(request, name) == value


def test_missing_model_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({"messages": MESSAGES})

    assert info.value.errors()[0]["loc"] == ("model",)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, False),
        ({"stream": True}, False),
        ({"stream": True, "stream_options": {"include_usage": False}}, False),
        ({"stream": True, "stream_options": {}}, False),
        ({"stream": True, "stream_options": {"include_usage": True}}, True),
        # Usage chunks only exist in streams: a non-streaming request never "asks" for one.
        ({"stream": False, "stream_options": {"include_usage": True}}, False),
    ],
)
def test_include_usage_only_when_streaming_and_asked(fields: dict[str, object], expected: bool) -> None:
    assert make(**fields).include_usage is expected


def test_stream_options_keep_unknown_fields() -> None:
    request = make(stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True})

    assert request.stream_options is not None
    assert request.stream_options.model_dump()["continuous_usage_stats"] is True
