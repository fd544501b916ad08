"""structlog set-up: called once from the entry point, never at import time."""

from __future__ import annotations

import io
import logging
import sys
from typing import Any, BinaryIO

import orjson
import structlog

from gateway.record import RequestRecord
from gateway.settings import LogSettings


def configure_logging(settings: LogSettings, stream: BinaryIO | None = None) -> None:
    """Route structlog (and the stdlib loggers of our dependencies) to stderr (or ``stream``).

    JSON lines are rendered by orjson straight to bytes (structlog's documented fast path: the
    access log writes one line per request, so its cost is per request).
    """
    level = getattr(logging, settings.level.upper())
    common: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,  # the request id, bound by the front door
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if settings.format == "json":
        processors: list[structlog.typing.Processor] = [
            *common,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory: Any = structlog.BytesLoggerFactory(file=stream or sys.stderr.buffer)
    else:
        processors = [*common, structlog.dev.ConsoleRenderer(colors=stream is None and sys.stderr.isatty())]
        text = io.TextIOWrapper(stream, write_through=True) if stream is not None else sys.stderr
        factory = structlog.PrintLoggerFactory(file=text)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr, format="%(message)s")


def printable(value: str, limit: int = 256) -> str:
    """A client-given value made safe for a log line: control characters escaped (a newline cannot
    forge a line), bounded in length."""
    value = value[:limit]
    return value if value.isprintable() else value.encode("unicode_escape").decode("ascii")


def log_request(logger: structlog.typing.FilteringBoundLogger, record: RequestRecord) -> None:
    """The one summary line per request. Never includes prompts, outputs or keys."""
    logger.info(
        "request",
        request_id=record.request_id,
        route=record.route,
        key=record.key,
        model=None if record.model is None else printable(record.model),
        served=record.public_model,
        replica=record.replica,
        retries=record.retries or None,
        resumes=record.resumes or None,
        stream=record.stream,
        status=record.status,
        error=record.error_type,
        duration_ms=round(record.elapsed() * 1000, 2),
        ttft_ms=None if record.ttft_s is None else round(record.ttft_s * 1000, 2),
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
    )
