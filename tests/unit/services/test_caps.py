"""Caps on one request (``limits`` in the configuration): a 400 naming the parameter, before any
engine sees the request; reloaded with the configuration."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import KeyCaps, RequestLimits, parse_config
from gateway.errors import InvalidRequestError
from gateway.protocol.chat import ChatCompletionRequest
from gateway.protocol.embeddings import EmbeddingRequest
from gateway.services.caps import Caps

HI = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": HI, **fields})


def embed(value: Any) -> EmbeddingRequest:
    return EmbeddingRequest.model_validate({"model": "m", "input": value})


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 17}, "n"),
        ({"messages": HI * 1025}, "messages"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ],
)
def test_a_chat_request_past_a_default_cap_is_a_400_naming_the_parameter(
    fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        Caps().check_chat(chat(**fields))

    assert caught.value.param == param and caught.value.status == 400
    assert "at most" in caught.value.message


@pytest.mark.parametrize(
    "fields",
    [
        {"n": 16},
        {"messages": HI * 1024},
        {"stop": ["a", "b", "c", "d"]},
        {"stop": "x"},
        {"max_tokens": 10**6},
    ],
)
def test_requests_at_the_default_caps_pass(fields: dict[str, Any]) -> None:
    Caps().check_chat(chat(**fields))


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_a_configured_token_cap_applies_to_both_spellings(param: str) -> None:
    caps = Caps(RequestLimits(max_tokens=256))

    caps.check_chat(chat(**{param: 256}))
    with pytest.raises(InvalidRequestError) as caught:
        caps.check_chat(chat(**{param: 257}))
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("value", "count"),
    [("one text", 1), (["a"] * 3, 3), ([1, 2, 3, 4], 1), ([[1, 2], [3], [4]], 3)],
)
def test_embedding_inputs_are_counted_as_the_engine_will_batch_them(value: Any, count: int) -> None:
    caps = Caps(RequestLimits(max_embedding_inputs=count))
    caps.check_embeddings(embed(value))
    if count > 1:
        with pytest.raises(InvalidRequestError) as caught:
            Caps(RequestLimits(max_embedding_inputs=count - 1)).check_embeddings(embed(value))
        assert caught.value.param == "input"


def test_fifty_thousand_inputs_are_refused_by_default() -> None:
    with pytest.raises(InvalidRequestError, match="50000 inputs"):
        Caps().check_embeddings(embed(["x"] * 50_000))


async def test_the_caps_follow_a_reloaded_configuration() -> None:
    caps = Caps()
    config = parse_config(
        "models:\n  - {name: m, task: chat, engine: {url: 'http://127.0.0.1:9'}}\nlimits: {max_n: 2}\n"
    )

    await caps.rebuild(config)

    with pytest.raises(InvalidRequestError):
        caps.check_chat(chat(n=3))


def test_a_keys_own_caps_apply_beside_the_global_ones_and_the_lower_wins() -> None:
    caps = Caps(RequestLimits(max_tokens=100, max_n=4))
    own = KeyCaps(max_tokens=10, max_n=8, max_embedding_inputs=2)

    with pytest.raises(InvalidRequestError) as caught:
        caps.check_chat(chat(max_tokens=20), own)  # the key's 10, below the global 100
    assert caught.value.param == "max_tokens"
    with pytest.raises(InvalidRequestError) as caught:
        caps.check_chat(chat(n=5), own)  # the global 4, below the key's 8
    assert caught.value.param == "n"
    with pytest.raises(InvalidRequestError):
        caps.check_embeddings(embed(["a", "b", "c"]), own)
    caps.check_chat(chat(max_tokens=20))  # other keys: the global caps only
    caps.check_embeddings(embed(["a", "b", "c"]))


def test_a_keys_cap_on_a_parameter_the_global_caps_leave_open_applies() -> None:
    with pytest.raises(InvalidRequestError):
        Caps(RequestLimits()).check_chat(chat(max_completion_tokens=11), KeyCaps(max_tokens=10))
