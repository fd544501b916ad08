"""FrontDoor: every /v1/ request gets a record and a request id; the hot paths are served directly
(POST only: any other method is a 405 answered here); everything else goes on to Litestar."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import structlog

from gateway.api.asgi import record_of
from gateway.api.front import FrontDoor, endpoint_of
from gateway.errors import EngineUnavailableError
from gateway.metrics import Metrics
from gateway.protocol import paths
from gateway.record import RequestRecord

PATH = paths.CHAT_COMPLETIONS


def scope(method: str = "POST", path: str = PATH, request_id: bytes | None = None) -> dict[str, Any]:
    headers = [] if request_id is None else [(b"x-request-id", request_id)]
    return {"type": "http", "method": method, "path": path, "headers": headers}


class Sent:
    """An ASGI send that keeps the messages."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.messages[0]["headers"])


class Door:
    """A FrontDoor with one hot handler (``behaviour``) and a stand-in for Litestar."""

    def __init__(self, behaviour: Any) -> None:
        self.passed_on: list[tuple[str, RequestRecord | None]] = []
        self.records: list[RequestRecord] = []
        self.context: list[dict[str, Any]] = []

        async def handler(scope: Any, receive: Any, send: Any, record: RequestRecord) -> None:
            self.records.append(record)
            self.context.append(structlog.contextvars.get_contextvars())
            await behaviour(send, record)

        async def litestar(scope: Any, receive: Any, send: Any) -> None:
            self.passed_on.append((scope["method"], record_of(scope)))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}", "more_body": False})

        self.metrics = Metrics()
        self.app = FrontDoor(litestar, {PATH: handler}, self.metrics, log_requests=False)

    async def __call__(self, s: dict[str, Any]) -> Sent:
        sent = Sent()
        await self.app(s, receive, sent)
        return sent


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def ok(send: Any, record: RequestRecord) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}", "more_body": False})


async def test_a_hot_post_is_served_with_a_record_and_the_request_id_bound_to_the_log_context() -> None:
    door = Door(ok)

    sent = await door(scope(request_id=b"abc-123"))

    assert sent.status == 200 and sent.headers[b"x-request-id"] == b"abc-123"
    assert door.records[0].request_id == "abc-123" and door.records[0].status == 200
    assert door.context == [{"request_id": "abc-123"}]
    assert structlog.contextvars.get_contextvars() == {}  # unbound once the request is over
    assert door.passed_on == []


async def test_what_served_the_request_is_named_in_the_headers() -> None:
    async def served(send: Any, record: RequestRecord) -> None:
        record.public_model, record.version, record.replica = "chat:v2", "v2", "chat-v2-0"
        await ok(send, record)

    sent = await Door(served)(scope())

    assert sent.headers[b"x-offload-model"] == b"chat:v2"
    assert sent.headers[b"x-offload-version"] == b"v2"
    assert sent.headers[b"x-offload-replica"] == b"chat-v2-0"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_another_method_on_a_hot_path_is_a_405_answered_here(method: str) -> None:
    async def never(send: Any, record: RequestRecord) -> None:
        raise AssertionError("the hot handler must not run")

    door = Door(never)
    sent = await door(scope(method))

    assert sent.status == 405
    assert sent.headers[b"allow"] == b"POST"
    assert orjson.loads(sent.messages[1]["body"])["error"]["code"] == "method_not_allowed"
    assert door.passed_on == []


async def test_a_gateway_error_becomes_its_openai_error_with_retry_after() -> None:
    async def fail(send: Any, record: RequestRecord) -> None:
        raise EngineUnavailableError("No engine is ready.", retry_after=7)

    door = Door(fail)
    sent = await door(scope())

    start, body = sent.messages
    assert start["status"] == 503
    assert (b"retry-after", b"7") in start["headers"]
    assert orjson.loads(body["body"])["error"]["message"] == "No engine is ready."
    assert door.records[0].error_type == EngineUnavailableError.code


async def test_a_bug_becomes_a_bare_500_without_details() -> None:
    async def crash(send: Any, record: RequestRecord) -> None:
        raise RuntimeError("secret internal detail at 127.0.0.7")

    sent = await Door(crash)(scope())

    assert sent.status == 500
    assert b"127.0.0.7" not in sent.messages[1]["body"] and b"secret" not in sent.messages[1]["body"]


async def test_an_error_after_the_response_started_is_not_answered_twice() -> None:
    async def break_midway(send: Any, record: RequestRecord) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("stream broke")

    door = Door(break_midway)
    sent = Sent()
    with pytest.raises(RuntimeError):
        await door.app(scope(), receive, sent)
    assert len(sent.messages) == 1


async def test_a_client_gone_before_any_response_is_recorded_as_499() -> None:
    async def leave(send: Any, record: RequestRecord) -> None:
        raise KeyboardInterrupt  # not an Exception: nothing may be answered

    door = Door(leave)
    with pytest.raises(KeyboardInterrupt):
        await door(scope())

    assert door.records[0].status == 499 and door.records[0].error_type == "client_disconnected"


@pytest.mark.parametrize(("method", "path"), [("GET", paths.MODELS), ("POST", "/v1/unknown")])
async def test_other_api_paths_go_on_to_litestar_with_their_record(method: str, path: str) -> None:
    door = Door(ok)

    sent = await door(scope(method, path, request_id=b"r-9"))

    assert [m for m, _ in door.passed_on] == [method]
    record = door.passed_on[0][1]
    assert record is not None and record.request_id == "r-9"
    assert sent.headers[b"x-request-id"] == b"r-9"


@pytest.mark.parametrize("path", [paths.HEALTH, paths.READY, paths.METRICS])
async def test_probes_and_scrapes_get_no_record(path: str) -> None:
    door = Door(ok)

    sent = await door(scope("GET", path))

    assert door.passed_on == [("GET", None)]
    assert b"x-request-id" not in sent.headers


def test_endpoint_labels_are_a_bounded_set() -> None:
    assert endpoint_of(paths.CHAT_COMPLETIONS) == paths.CHAT_COMPLETIONS
    assert endpoint_of("/v1/models/chat:v2") == paths.MODEL
    assert endpoint_of("/v1/anything-a-client-sends") == "other"


async def test_oversized_headers_are_a_431_before_anything_else_runs() -> None:
    door = Door(ok)
    big = scope("POST", PATH)
    big["headers"] = [(b"x-filler", b"a" * 40_000)]

    sent = await door(big)

    assert sent.status == 431 and sent.headers[b"connection"] == b"close"
    assert orjson.loads(sent.messages[1]["body"])["error"]["code"] == "request_header_fields_too_large"
    assert door.records == [] and door.passed_on == []
    assert (await door(scope("POST", PATH))).status == 200  # ordinary headers are fine
