"""Engine answers read and normalised: ``post_answer`` and ``engine_error``."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import EngineError, EngineStatusError
from gateway.routing.table import RouteTable
from gateway.services.replies import engine_error, post_answer
from gateway.upstream import UpstreamReply
from tests.unit.conftest import CHAT_URL
from tests.unit.fakes import FakeUpstream

# --- engine_error: normalising engine error answers ---------------------------------------------


def vllm_error(message: str, type_: str, code: int, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def test_vllm_400_becomes_an_invalid_request_error_with_a_string_code() -> None:
    error = engine_error(400, vllm_error("max_tokens is too large", "BadRequestError", 400, "max_tokens"))

    assert error.status == 400
    assert error.type == "invalid_request_error"
    assert error.code == "invalid_request"
    assert isinstance(error.code, str)
    assert error.message == "max_tokens is too large"
    assert error.param == "max_tokens"


def test_envelope_of_a_normalised_error_validates_as_openai_shape() -> None:
    body = orjson.loads(
        engine_error(400, vllm_error("bad", "BadRequestError", 400)).to_response().model_dump_json()
    )

    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["message"] == "bad"


@pytest.mark.parametrize("status", [500, 501, 502, 504])
def test_engine_5xx_becomes_502_without_leaking_the_engine_text(status: int) -> None:
    body = vllm_error("CUDA out of memory at /opt/vllm/worker.py:123", "InternalServerError", status)

    error = engine_error(status, body)

    assert error.status == 502
    assert error.type == "server_error"
    assert "CUDA" not in error.message
    assert "worker.py" not in error.message
    assert error.message == "The engine failed to process the request."
    assert error.retry_after is None


def test_engine_503_stays_503_with_a_generic_message() -> None:
    error = engine_error(503, vllm_error("engine dead at 127.0.0.5", "ServiceUnavailable", 503))

    assert error.status == 503
    assert error.type == "server_error"
    assert "127.0.0.5" not in error.message
    assert error.retry_after == 1  # busy, not broken


@pytest.mark.parametrize(
    "body", [b"", b"<html>Bad Gateway</html>", b"[1, 2]", b'{"error": "just a string"}', b"null"]
)
def test_unreadable_4xx_body_gets_a_generic_message(body: bytes) -> None:
    error = engine_error(400, body)

    assert error.status == 400
    assert error.message == "The engine rejected the request."
    assert error.param is None


def test_garbage_5xx_body_still_becomes_502() -> None:
    error = engine_error(500, b"\x00\xffgarbage")

    assert error.status == 502
    assert error.message == "The engine failed to process the request."


def test_flat_message_body_is_understood() -> None:
    error = engine_error(
        400,
        orjson.dumps(
            {"object": "error", "message": "prompt too long", "type": "BadRequestError", "code": 400}
        ),
    )

    assert error.message == "prompt too long"
    assert error.status == 400


def test_engine_404_and_429_keep_their_status_and_get_known_codes() -> None:
    assert engine_error(404, vllm_error("no such model", "NotFoundError", 404)).code == "not_found"
    limited = engine_error(429, vllm_error("too many", "RateLimitError", 429))
    assert (limited.status, limited.code) == (429, "rate_limit_exceeded")
    assert limited.retry_after == 1


# --- post_answer ---------------------------------------------------------------------------------


async def test_post_answer_sends_the_served_name_and_returns_the_engine_answer(table: RouteTable) -> None:
    upstream = FakeUpstream(reply=UpstreamReply(200, b'{"model": "engine-chat", "choices": []}'))
    replica = table.replicas()[0]

    answer = await post_answer(upstream, replica, "/v1/chat/completions", {"model": "chat", "top_k": 3})  # type: ignore[arg-type]

    assert answer == {"model": "engine-chat", "choices": []}
    assert upstream.calls == [(CHAT_URL, "/v1/chat/completions", {"model": "engine-chat", "top_k": 3})]


async def test_post_answer_raises_the_normalised_engine_error(table: RouteTable) -> None:
    upstream = FakeUpstream(reply=UpstreamReply(400, vllm_error("too long", "BadRequestError", 400)))

    with pytest.raises(EngineStatusError) as info:
        await post_answer(upstream, table.replicas()[0], "/v1/chat/completions", {})  # type: ignore[arg-type]

    assert (info.value.status, info.value.message) == (400, "too long")


@pytest.mark.parametrize("body", [b"{truncated", b"[1, 2]", b"null"])
async def test_post_answer_rejects_an_answer_that_is_not_a_json_object(
    table: RouteTable, body: bytes
) -> None:
    upstream = FakeUpstream(reply=UpstreamReply(200, body))

    with pytest.raises(EngineError) as info:
        await post_answer(upstream, table.replicas()[0], "/v1/chat/completions", {})  # type: ignore[arg-type]

    assert info.value.status == 502
