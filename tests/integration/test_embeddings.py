"""Embeddings through the gateway to a real vLLM pooling engine."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest
from openai import OpenAI

from tests.integration.conftest import EMBED


def test_sdk_default_base64_equals_float_within_1e6(client: OpenAI) -> None:
    as_b64 = client.embeddings.create(model=EMBED, input=["hello world"])  # SDK asks for base64
    as_float = client.embeddings.create(model=EMBED, input=["hello world"], encoding_format="float")
    a = np.array(as_b64.data[0].embedding)
    b = np.array(as_float.data[0].embedding)
    assert a.shape == (384,)
    assert np.max(np.abs(a - b)) <= 1e-6
    assert as_float.model == EMBED
    # all-MiniLM-L6-v2 on "hello world" starts like this with sentence-transformers
    assert np.allclose(b[:3], [-0.0345, 0.0311, 0.0068], atol=2e-3)


def test_raw_base64_is_little_endian_float32(client: OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(
        model=EMBED, input="hello world", encoding_format="base64"
    )
    payload = raw.http_response.json()["data"][0]["embedding"]
    vec = np.frombuffer(base64.b64decode(payload), dtype="<f4")
    assert vec.shape == (384,)


def test_list_and_token_array_inputs(client: OpenAI) -> None:
    many = client.embeddings.create(model=EMBED, input=["a cat", "a dog", "a car"], encoding_format="float")
    assert [d.index for d in many.data] == [0, 1, 2]
    tokens = client.embeddings.create(model=EMBED, input=[101, 7592, 2088, 102], encoding_format="float")
    assert len(tokens.data) == 1 and len(tokens.data[0].embedding) == 384
    batches = client.embeddings.create(
        model=EMBED, input=[[101, 7592, 102], [101, 2088, 102]], encoding_format="float"
    )
    assert len(batches.data) == 2
    assert many.usage.prompt_tokens > 0


def test_dimensions_are_passed_to_the_engine(client: OpenAI) -> None:
    # MiniLM is not a Matryoshka model: the engine itself refuses `dimensions`, proving it got there.
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=EMBED, input="hi", dimensions=8)
    assert "dimensions" in str(err.value.message).lower() or "matryoshka" in str(err.value.message).lower()


def test_empty_input_is_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=EMBED, input=[])
    assert err.value.param == "input"


def test_chat_model_cannot_embed(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="smollm2", input="hi")
    assert err.value.param == "model"
