from __future__ import annotations

import pytest

from gateway.errors import InvalidRequestError
from gateway.protocol.chat import ChatCompletionRequest
from gateway.protocol.embeddings import EmbeddingRequest
from gateway.services.parsing import parse_body


@pytest.mark.parametrize("body", [b"{", b"", b"not json", b'{"model": "chat",}', b"\xff\xfe"])
def test_malformed_json_is_an_invalid_json_error(body: bytes) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_body(body, ChatCompletionRequest)

    assert info.value.code == "invalid_json"
    assert info.value.status == 400


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"3", b"null", b'[{"model": "chat"}]'])
def test_json_that_is_not_an_object_is_rejected(body: bytes) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_body(body, ChatCompletionRequest)

    assert info.value.code == "invalid_json"
    assert "object" in info.value.message


def test_schema_error_names_the_top_level_field_in_param() -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_body(
            b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "n": 0}',
            ChatCompletionRequest,
        )

    assert info.value.param == "n"
    assert "'n'" in info.value.message
    assert info.value.code == "invalid_request"


def test_schema_error_names_a_nested_field_with_a_dotted_path() -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_body(
            b'{"model": "chat", "messages": [{"role": "user"}, {"role": "robot"}]}', ChatCompletionRequest
        )

    assert info.value.param == "messages.1.role"


def test_missing_required_field_is_named() -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_body(b'{"model": "embed"}', EmbeddingRequest)

    assert info.value.param == "input"


def test_error_message_does_not_echo_the_submitted_value() -> None:
    secret = "sk-very-secret-value"
    with pytest.raises(InvalidRequestError) as info:
        parse_body(b'{"model": "chat", "messages": "' + secret.encode() + b'"}', ChatCompletionRequest)

    assert secret not in info.value.message


def test_valid_body_returns_the_raw_dict_with_unknown_fields_and_the_model() -> None:
    body = b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "top_k": 5, "stream": true}'

    data, request = parse_body(body, ChatCompletionRequest)

    assert data == {
        "model": "chat",
        "messages": [{"role": "user", "content": "x"}],
        "top_k": 5,
        "stream": True,
    }
    # The relayed dict is exactly what was sent: no defaults filled in.
    assert "n" not in data
    assert request.stream is True
    assert request.model == "chat"
