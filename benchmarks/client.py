"""One benchmark request over a pooled aiohttp session, timed the way vLLM's own benchmark does.

Streams are parsed here (no SDK: it would cost more than the server under test). TTFT is the time
to the first non-empty ``delta.content``; every later content event adds one inter-token gap.
Events that arrive in one network read share one timestamp, as the client really saw them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

CHAT_PATH = "/v1/chat/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
_JSON = {"Content-Type": "application/json"}


@dataclass(slots=True)
class RequestRecord:
    """What one request measured. Times are seconds; ``start`` is relative to the run's start."""

    start: float
    end: float = 0.0
    """When the answer ended or failed, relative to the run's start."""
    latency: float | None = None
    """End-to-end seconds, for successful requests."""
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    events: int = 0
    """SSE ``data:`` events received (not counting ``[DONE]``)."""
    error: str | None = None
    """Kind of failure: ``http_<status>``, ``connect``, ``timeout``, ``broken``, ``in_band``,
    ``incomplete`` or ``bad_response``; None when the request succeeded."""
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "latency": self.latency,
            "ttft": self.ttft,
            "itl": self.itl,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "events": self.events,
            "error": self.error,
            "detail": self.detail,
        }


class _Failure(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


async def send(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    stream: bool,
    embeddings: bool,
    headers: dict[str, str],
    timeout: float,
    record: RequestRecord,
    t0: float,
) -> RequestRecord:
    """POST ``body`` to ``url`` and fill ``record`` (never raises for request failures)."""
    began = time.perf_counter()
    record.start = began - t0
    try:
        async with asyncio.timeout(timeout):
            async with session.post(url, data=body, headers=headers) as response:
                if response.status != 200:
                    text = (await response.read())[:300].decode("utf-8", "replace")
                    raise _Failure(f"http_{response.status}", text)
                if stream:
                    await _read_stream(response, record, began)
                else:
                    _read_whole(await response.read(), record, embeddings)
        record.latency = time.perf_counter() - began
    except _Failure as exc:
        record.error, record.detail = exc.kind, exc.detail
    except TimeoutError:
        record.error, record.detail = "timeout", f"no complete answer within {timeout} s"
    except aiohttp.ClientConnectorError as exc:
        record.error, record.detail = "connect", str(exc)
    except aiohttp.ClientError as exc:  # payload cut, server disconnected, socket errors
        record.error, record.detail = "broken", f"{type(exc).__name__}: {exc}"
    record.end = time.perf_counter() - t0
    return record


async def _read_stream(response: aiohttp.ClientResponse, record: RequestRecord, began: float) -> None:
    buffer = b""
    last: float | None = None
    usage_tokens: int | None = None
    content_events = 0
    async for data in response.content.iter_any():
        now = time.perf_counter()
        buffer += data
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    record.output_tokens = usage_tokens if usage_tokens is not None else content_events
                    return
                record.events += 1
                try:
                    chunk = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    raise _Failure("bad_response", payload[:200].decode("utf-8", "replace")) from None
                if "error" in chunk:
                    raise _Failure("in_band", str(chunk["error"])[:300])
                for choice in chunk.get("choices") or ():
                    if (choice.get("delta") or {}).get("content"):
                        content_events += 1
                        if last is None:
                            record.ttft = now - began
                        else:
                            record.itl.append(now - last)
                        last = now
                usage = chunk.get("usage")
                if usage:
                    record.prompt_tokens = usage.get("prompt_tokens") or 0
                    usage_tokens = usage.get("completion_tokens")
    raise _Failure("incomplete", f"stream ended without [DONE] after {record.events} events")


def _read_whole(raw: bytes, record: RequestRecord, embeddings: bool) -> None:
    try:
        answer = orjson.loads(raw)
        usage = answer.get("usage") or {}
        record.prompt_tokens = usage.get("prompt_tokens") or 0
        if embeddings:
            if not answer["data"]:
                raise ValueError("no embeddings")
        else:
            record.output_tokens = usage.get("completion_tokens") or 0
            _ = answer["choices"][0]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise _Failure("bad_response", raw[:300].decode("utf-8", "replace")) from None


def chat_body(
    model: str, prompt: str, max_tokens: int, stream: bool, ignore_eos: bool, extra: dict[str, Any]
) -> bytes:
    """A chat completion request body."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    if ignore_eos:
        body["ignore_eos"] = True
    body.update(extra)
    return orjson.dumps(body)


def embeddings_body(model: str, prompt: str, extra: dict[str, Any]) -> bytes:
    """An embeddings request body."""
    body: dict[str, Any] = {"model": model, "input": prompt, "encoding_format": "float"}
    body.update(extra)
    return orjson.dumps(body)


def json_headers(extra: dict[str, str]) -> dict[str, str]:
    """Request headers: JSON content type plus the caller's."""
    return {**_JSON, **extra}
