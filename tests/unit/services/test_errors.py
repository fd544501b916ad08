from __future__ import annotations

import orjson
import pytest

from gateway.errors import (
    ClientDisconnected,
    EngineConnectError,
    EngineError,
    EngineStatusError,
    EngineTimeoutError,
    EngineUnavailableError,
    GatewayError,
    InvalidRequestError,
    MethodNotAllowedError,
    ModelNotFoundError,
    NotFoundError,
    RequestTooLargeError,
)


@pytest.mark.parametrize(
    ("cls", "status", "type_", "code"),
    [
        (GatewayError, 500, "server_error", "internal_error"),
        (InvalidRequestError, 400, "invalid_request_error", "invalid_request"),
        (NotFoundError, 404, "invalid_request_error", "not_found"),
        (ModelNotFoundError, 404, "invalid_request_error", "model_not_found"),
        (MethodNotAllowedError, 405, "invalid_request_error", "method_not_allowed"),
        (RequestTooLargeError, 413, "invalid_request_error", "request_too_large"),
        (EngineError, 502, "server_error", "engine_error"),
        (EngineUnavailableError, 503, "server_error", "engine_unavailable"),
        (EngineTimeoutError, 504, "server_error", "engine_timeout"),
        (EngineConnectError, 503, "server_error", "engine_unavailable"),
        (ClientDisconnected, 499, "client_disconnected", "client_disconnected"),
    ],
)
def test_each_error_class_maps_to_its_status_type_and_code(
    cls: type[GatewayError], status: int, type_: str, code: str
) -> None:
    error = cls("message")

    assert (error.status, error.type, error.code) == (status, type_, code)
    assert isinstance(error, GatewayError)


def test_an_unreachable_engine_is_a_kind_of_unavailable_engine() -> None:
    assert isinstance(EngineConnectError("unreachable"), EngineUnavailableError)
    assert not isinstance(EngineConnectError("unreachable"), EngineError)


def test_code_can_be_overridden_per_instance_without_changing_the_class() -> None:
    error = InvalidRequestError("bad json", code="invalid_json")

    assert error.code == "invalid_json"
    assert InvalidRequestError("other").code == "invalid_request"


def test_to_response_is_the_openai_error_envelope() -> None:
    error = ModelNotFoundError("The model 'x' does not exist.", param="model")

    assert orjson.loads(error.to_response().model_dump_json()) == {
        "error": {
            "message": "The model 'x' does not exist.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_retry_after_is_kept_and_absent_by_default() -> None:
    assert EngineUnavailableError("later", retry_after=5).retry_after == 5
    assert EngineUnavailableError("later").retry_after is None


def test_message_is_the_exception_text() -> None:
    assert str(EngineError("the engine failed")) == "the engine failed"


@pytest.mark.parametrize(
    ("status", "type_", "code"),
    [
        (400, "invalid_request_error", "invalid_request"),
        (401, "authentication_error", "invalid_api_key"),
        (404, "invalid_request_error", "not_found"),
        (413, "invalid_request_error", "request_too_large"),
        (422, "invalid_request_error", "invalid_request"),
        (429, "rate_limit_exceeded", "rate_limit_exceeded"),
        (418, "invalid_request_error", "engine_error"),
        (502, "server_error", "engine_error"),
        (503, "server_error", "engine_error"),
    ],
)
def test_engine_status_error_derives_type_and_code_from_the_status(
    status: int, type_: str, code: str
) -> None:
    error = EngineStatusError(status, "msg", param="p")

    assert (error.status, error.type, error.code, error.param) == (status, type_, code, "p")


def test_engine_status_error_does_not_change_other_instances() -> None:
    EngineStatusError(429, "slow down")

    assert EngineStatusError(400, "bad").status == 400
    assert GatewayError("x").status == 500
