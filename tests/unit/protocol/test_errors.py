from __future__ import annotations

import orjson

from gateway.protocol.errors import ErrorDetail, ErrorResponse


def test_error_response_has_the_openai_envelope() -> None:
    body = ErrorResponse(
        error=ErrorDetail(message="bad", type="invalid_request_error", param="model", code="x")
    )

    assert orjson.loads(body.model_dump_json()) == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "model", "code": "x"}
    }


def test_param_and_code_are_present_as_null_when_unset() -> None:
    body = orjson.loads(ErrorResponse(error=ErrorDetail(message="m", type="t")).model_dump_json())

    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] is None
    assert body["error"]["code"] is None


def test_error_response_parses_an_openai_error_body() -> None:
    parsed = ErrorResponse.model_validate_json(
        b'{"error":{"message":"m","type":"t","param":null,"code":"c"}}'
    )

    assert parsed.error.message == "m"
    assert parsed.error.code == "c"
