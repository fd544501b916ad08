"""HotRoutes: POST on a hot path goes straight to its handler; errors before the response are OpenAI-shaped."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from litestar import asgi

from gateway.api.hot import HotRoutes
from gateway.record import RequestRecord
from gateway.errors import EngineUnavailableError

PATH = "/v1/chat/completions"


def scope(method: str = "POST", path: str = PATH) -> dict[str, Any]:
    record = RequestRecord(request_id="r", route=path)
    return {"type": "http", "method": method, "path": path, "headers": [], "offload_record": record}


class Sent:
    """An ASGI send that keeps the messages and, like the access middleware, notes the status."""

    def __init__(self, record: RequestRecord) -> None:
        self.messages: list[dict[str, Any]] = []
        self.record = record

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.record.status = message["status"]
        self.messages.append(message)


def routes(behaviour: Any) -> tuple[HotRoutes, list[str]]:
    passed_on: list[str] = []

    @asgi(PATH, copy_scope=False)
    async def handler(scope: Any, receive: Any, send: Any) -> None:
        await behaviour(send)

    async def litestar(scope: Any, receive: Any, send: Any) -> None:
        passed_on.append(scope["method"])

    return HotRoutes(litestar, [handler]), passed_on  # type: ignore[arg-type]


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def test_a_gateway_error_becomes_its_openai_error_with_retry_after() -> None:
    async def fail(send: Any) -> None:
        raise EngineUnavailableError("No engine is ready.", retry_after=7)

    app, _ = routes(fail)
    s = scope()
    sent = Sent(s["offload_record"])
    await app(s, receive, sent)  # type: ignore[arg-type]

    start, body = sent.messages
    assert start["status"] == 503
    assert (b"retry-after", b"7") in start["headers"]
    assert orjson.loads(body["body"])["error"]["message"] == "No engine is ready."
    assert s["offload_record"].error_type == EngineUnavailableError.code


async def test_a_bug_becomes_a_bare_500_without_details() -> None:
    async def crash(send: Any) -> None:
        raise RuntimeError("secret internal detail at 10.0.0.7")

    app, _ = routes(crash)
    s = scope()
    sent = Sent(s["offload_record"])
    await app(s, receive, sent)  # type: ignore[arg-type]

    assert sent.messages[0]["status"] == 500
    assert b"10.0.0.7" not in sent.messages[1]["body"] and b"secret" not in sent.messages[1]["body"]


async def test_an_error_after_the_response_started_is_not_answered_twice() -> None:
    async def break_midway(send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("stream broke")

    app, _ = routes(break_midway)
    s = scope()
    sent = Sent(s["offload_record"])
    with pytest.raises(RuntimeError):
        await app(s, receive, sent)  # type: ignore[arg-type]
    assert len(sent.messages) == 1


@pytest.mark.parametrize(("method", "path"), [("GET", PATH), ("POST", "/v1/models")])
async def test_other_methods_and_paths_go_on_to_litestar(method: str, path: str) -> None:
    async def never(send: Any) -> None:
        raise AssertionError("the hot handler must not run")

    app, passed_on = routes(never)
    s = scope(method, path)
    await app(s, receive, Sent(s["offload_record"]))  # type: ignore[arg-type]

    assert passed_on == [method]
