"""structlog set-up: called once from the entry point, never at import time."""

from __future__ import annotations

import logging
import sys

import structlog

from gateway.services.accounting import RequestRecord
from gateway.settings import LogSettings


def configure_logging(settings: LogSettings) -> None:
    """Route structlog (and the stdlib loggers of our dependencies) to stderr."""
    level = getattr(logging, settings.level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if settings.format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr, format="%(message)s")


def log_request(logger: structlog.typing.FilteringBoundLogger, record: RequestRecord) -> None:
    """The one summary line per request. Never includes prompts, outputs or keys."""
    logger.info(
        "request",
        request_id=record.request_id,
        route=record.route,
        model=record.model,
        served=record.public_model,
        replica=record.replica,
        retries=record.retries or None,
        stream=record.stream,
        status=record.status,
        error=record.error_type,
        duration_ms=round(record.elapsed() * 1000, 2),
        ttft_ms=None if record.ttft_s is None else round(record.ttft_s * 1000, 2),
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
    )
