"""Chat completions from the simulator, as the official OpenAI SDK sees them."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.sim.conftest import RunningSim

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something."}]


def test_non_streaming_chat_returns_assistant_text_and_usage(sim: RunningSim) -> None:
    answer = sim.client().chat.completions.create(model="sim", messages=MESSAGES)
    choice = answer.choices[0]
    assert answer.id.startswith("chatcmpl-")
    assert answer.model == "sim"
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 8
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 8


def test_max_tokens_below_output_length_stops_with_length(sim: RunningSim) -> None:
    answer = sim.client().chat.completions.create(model="sim", messages=MESSAGES, max_tokens=3)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 3


def test_ignore_eos_generates_exactly_max_tokens(sim: RunningSim) -> None:
    answer = sim.client().chat.completions.create(
        model="sim", messages=MESSAGES, max_tokens=20, extra_body={"ignore_eos": True}
    )
    assert answer.usage is not None and answer.usage.completion_tokens == 20
    assert answer.choices[0].finish_reason == "length"


def test_stream_starts_with_role_keeps_one_id_and_sends_one_finish_reason(sim: RunningSim) -> None:
    chunks = list(sim.client().chat.completions.create(model="sim", messages=MESSAGES, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason is not None]
    assert finishes == ["stop"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices and c.usage is None for c in chunks), "usage chunk sent without being asked"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    whole = sim.client().chat.completions.create(model="sim", messages=MESSAGES)
    assert text == whole.choices[0].message.content


def test_stream_ends_with_usage_chunk_only_when_asked(sim: RunningSim) -> None:
    chunks = list(
        sim.client().chat.completions.create(
            model="sim", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_stream_with_two_choices_gives_each_one_role_and_one_finish_reason(sim: RunningSim) -> None:
    chunks = list(sim.client().chat.completions.create(model="sim", messages=MESSAGES, stream=True, n=2))
    for index in (0, 1):
        mine = [ch for c in chunks for ch in c.choices if ch.index == index]
        assert mine[0].delta.role == "assistant"
        assert sum(ch.finish_reason is not None for ch in mine) == 1
        assert mine[-1].finish_reason == "stop"


def test_unknown_model_is_404_in_vllm_error_shape(sim: RunningSim) -> None:
    with pytest.raises(openai.NotFoundError):
        sim.client().chat.completions.create(model="nope", messages=MESSAGES)
    reply = httpx.post(sim.base_url + "/v1/chat/completions", json={"model": "nope", "messages": MESSAGES})
    assert reply.status_code == 404
    assert reply.json() == {
        "error": {
            "message": "The model `nope` does not exist.",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        }
    }


def test_invalid_request_is_400_bad_request_error_with_integer_code(sim: RunningSim) -> None:
    reply = httpx.post(sim.base_url + "/v1/chat/completions", json={"model": "sim", "messages": []})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["type"] == "BadRequestError"
    assert error["code"] == 400 and isinstance(error["code"], int)
    assert error["param"] == "messages"
    with pytest.raises(openai.BadRequestError):
        sim.client().chat.completions.create(model="sim", messages=MESSAGES, max_tokens=100_000)


def test_models_lists_every_served_name_and_aliases_answer(sim: RunningSim) -> None:
    client = sim.client()
    assert [m.id for m in client.models.list()] == ["sim", "sim-alias"]
    assert client.chat.completions.create(model="sim-alias", messages=MESSAGES).model == "sim-alias"


def test_health_answers_200(sim: RunningSim) -> None:
    assert httpx.get(sim.base_url + "/health").status_code == 200
