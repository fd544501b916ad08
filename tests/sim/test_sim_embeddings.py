"""Embeddings from the simulator: deterministic vectors, float and base64 encodings agree."""

from __future__ import annotations

import base64
import math
import struct

import httpx

from tests.sim.conftest import RunningSim

INPUTS = ["hello world", "another sentence", "hello world"]


def test_float_encoding_equals_base64_decoded_within_1e_6(sim: RunningSim) -> None:
    client = sim.client()
    floats = client.embeddings.create(model="sim", input=INPUTS, encoding_format="float")
    decoded_by_sdk = client.embeddings.create(model="sim", input=INPUTS)  # the SDK asks for base64
    raw = httpx.post(
        sim.base_url + "/v1/embeddings", json={"model": "sim", "input": INPUTS, "encoding_format": "base64"}
    ).json()
    for f, b, r in zip(floats.data, decoded_by_sdk.data, raw["data"], strict=True):
        ours = struct.unpack("<32f", base64.b64decode(r["embedding"]))  # little-endian float32
        assert len(f.embedding) == len(b.embedding) == 32
        assert max(abs(x - y) for x, y in zip(f.embedding, b.embedding, strict=True)) <= 1e-6
        assert max(abs(x - y) for x, y in zip(f.embedding, ours, strict=True)) <= 1e-6


def test_vectors_are_deterministic_unit_vectors_distinct_per_input(sim: RunningSim) -> None:
    answer = sim.client().embeddings.create(model="sim", input=INPUTS, encoding_format="float")
    first, second, repeat = (d.embedding for d in answer.data)
    assert first == repeat
    assert first != second
    assert abs(math.sqrt(sum(x * x for x in first)) - 1.0) < 1e-5
    assert [d.index for d in answer.data] == [0, 1, 2]
    assert answer.usage.prompt_tokens > 0


def test_dimensions_truncates_and_too_many_is_400(sim: RunningSim) -> None:
    answer = sim.client().embeddings.create(model="sim", input="x", dimensions=8, encoding_format="float")
    assert len(answer.data[0].embedding) == 8
    reply = httpx.post(sim.base_url + "/v1/embeddings", json={"model": "sim", "input": "x", "dimensions": 64})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "dimensions"


def test_token_id_inputs_are_embedded(sim: RunningSim) -> None:
    answer = sim.client().embeddings.create(model="sim", input=[[1, 2, 3], [4, 5]], encoding_format="float")
    assert len(answer.data) == 2
    assert answer.usage.prompt_tokens == 5
