"""Chat completions through the gateway to a real vLLM engine, driven by the official SDK."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from tests.integration.conftest import CHAT
from tests.integration.servers import GatewayProcess

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_answer_names_paris_as_the_sdk_snippet_expects(client: OpenAI) -> None:
    reply = client.chat.completions.create(model=CHAT, messages=QUESTION)
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.model == CHAT
    assert reply.choices[0].finish_reason in {"stop", "length"}
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_stream_has_role_first_one_id_and_exactly_one_finish_reason(client: OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=CHAT, messages=QUESTION, stream=True, temperature=0))
    assert chunks, "no chunks"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert len({c.created for c in chunks}) == 1
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert len(finishes) == 1
    assert all(c.usage is None for c in chunks), "usage chunk sent although not asked for"
    text = "".join(ch.delta.content or "" for c in chunks for ch in c.choices)
    assert "Paris" in text


def test_stream_ends_with_usage_chunk_only_when_asked(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=CHAT,
            messages=QUESTION,
            stream=True,
            max_tokens=5,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1] if c.choices)


def test_unknown_fields_pass_through_to_the_engine(client: OpenAI) -> None:
    # ignore_eos is a vLLM extension: with it the engine must produce exactly max_tokens tokens.
    reply = client.chat.completions.create(
        model=CHAT, messages=QUESTION, max_tokens=40, extra_body={"ignore_eos": True, "top_k": 5}
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 40
    assert reply.choices[0].finish_reason == "length"


def test_sse_wire_format_and_request_id(gateway: GatewayProcess) -> None:
    body = {"model": CHAT, "messages": QUESTION, "stream": True, "max_tokens": 3}
    with httpx.stream(
        "POST",
        gateway.base_url + "/v1/chat/completions",
        json=body,
        headers={"X-Request-Id": "test-id-42"},
        timeout=60,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-request-id"] == "test-id-42"
        text = "".join(r.iter_text())
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith(("data: ", ":")) for e in events)
    assert events[-1] == "data: [DONE]"
    # The summary line is written once the response is sent: it may land just after [DONE] is read.
    line = gateway.summary("test-id-42")
    assert (line["status"], line["stream"], line["model"]) == (200, True, CHAT)


def test_unknown_model_is_404_model_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    assert err.value.status_code == 404
    assert err.value.code == "model_not_found"


def test_schema_violation_is_400_naming_the_field(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=CHAT, messages=[])
    assert err.value.param == "messages"


def test_malformed_json_is_400(gateway: GatewayProcess) -> None:
    r = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_engine_validation_error_comes_back_as_400_without_engine_details(
    client: OpenAI, gateway: GatewayProcess
) -> None:
    # The prompt is far longer than the engine's max_model_len (4096): vLLM rejects it with 400.
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "hello " * 5000}])
    body = str(err.value.body)
    assert "127.0.0.1" not in body and "Traceback" not in body
