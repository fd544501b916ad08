"""The access log line: JSON (orjson, bytes) or console, with the request's summary and nothing of its content."""

from __future__ import annotations

import io
from collections.abc import Iterator

import orjson
import pytest
import structlog

from gateway.logging import configure_logging, log_request
from gateway.record import RequestRecord
from gateway.settings import LogSettings


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def record() -> RequestRecord:
    return RequestRecord(
        request_id="req-1",
        route="/v1/chat/completions",
        model="chat",
        status=200,
        prompt_tokens=12,
        completion_tokens=3,
    )


def test_json_lines_carry_the_summary() -> None:
    out = io.BytesIO()
    configure_logging(LogSettings(format="json"), out)

    log_request(structlog.get_logger("offload.access"), record())

    line = orjson.loads(out.getvalue().splitlines()[0])
    assert line["event"] == "request" and line["level"] == "info"
    assert (line["request_id"], line["status"], line["prompt_tokens"]) == ("req-1", 200, 12)
    assert line["timestamp"].endswith("Z")


def test_console_lines_carry_the_summary() -> None:
    out = io.BytesIO()
    configure_logging(LogSettings(format="console"), out)

    log_request(structlog.get_logger("offload.access"), record())

    text = out.getvalue().decode()
    assert "request" in text and "req-1" in text and "status" in text


def test_every_line_logged_while_a_request_id_is_bound_carries_it() -> None:
    out = io.BytesIO()
    configure_logging(LogSettings(format="json"), out)

    with structlog.contextvars.bound_contextvars(request_id="req-77"):
        structlog.get_logger("offload.errors").error("unhandled error", path="/v1/chat/completions")
    structlog.get_logger("offload.health").info("replica state")

    inside, outside = (orjson.loads(line) for line in out.getvalue().splitlines())
    assert inside["request_id"] == "req-77" and inside["event"] == "unhandled error"
    assert "request_id" not in outside


def test_a_client_given_model_name_cannot_forge_log_lines() -> None:
    out = io.BytesIO()
    configure_logging(LogSettings(format="console"), out)
    forged = record()
    forged.model = "chat\n2026-01-01 [info] request status=200 \x1b[31m" + "x" * 1000

    log_request(structlog.get_logger("offload.access"), forged)

    text = out.getvalue().decode()
    assert text.count("\n") == 1 and "\x1b" not in text
    assert "model=" in text and "chat" in text and "x" * 300 not in text
