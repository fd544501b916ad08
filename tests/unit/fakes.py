"""Test doubles for the engine side of the gateway (no network, no engines)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson

from gateway.routing.table import Replica
from gateway.upstream import EventStream, UpstreamReply


def closed_port() -> int:
    """A loopback port nothing listens on (bound once to learn a free number, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def replica(rid: str, model: str = "m") -> Replica:
    """A replica for routing tests (fields the table adds, such as ``version``, get neutral values)."""
    values: dict[str, Any] = {
        "id": rid,
        "model": model,
        "version": "",
        "base_url": f"http://{rid}.invalid",
        "served_name": model,
    }
    names = {f.name for f in dataclasses.fields(Replica)}
    return Replica(**{k: v for k, v in values.items() if k in names})


def chunk(
    content: str | None = None, finish: str | None = None, model: str = "engine-chat"
) -> dict[str, Any]:
    """A vLLM chat.completion.chunk with one choice."""
    delta: dict[str, Any] = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def usage_chunk(prompt: int, completion: int, model: str = "engine-chat") -> dict[str, Any]:
    """The final usage-only chunk vLLM sends when asked for ``include_usage``."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


class FakeEventStream(EventStream):
    """A :class:`gateway.upstream.EventStream` without a connection: scripted payloads plus ``close()``.

    Items are dicts (sent as JSON), raw bytes (sent as is), exceptions (raised at that point) or
    ``None`` (wait forever, like a silent engine).
    """

    def __init__(self, items: Iterable[dict[str, Any] | bytes | BaseException | None]) -> None:
        # No super().__init__(): there is no aiohttp response behind this stream.
        self._items = list(items)
        self.started = False
        self.finished = False
        self.close_calls = 0
        self.cancelled = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.started = True
        try:
            for item in self._items:
                if item is None:
                    await asyncio.Event().wait()
                elif isinstance(item, BaseException):
                    raise item
                elif isinstance(item, bytes):
                    yield item
                else:
                    yield orjson.dumps(item)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.finished = True

    def close(self) -> None:
        self.close_calls += 1

    async def aclose(self) -> None:
        self.close_calls += 1


class FakeUpstream:
    """Shaped like :class:`gateway.upstream.Upstream`: records what was sent, answers as told.

    ``per_url`` answers by engine base URL (a reply, a stream or an exception to raise); other
    engines get ``reply``/``stream``/``error``.
    """

    def __init__(
        self,
        *,
        reply: UpstreamReply | None = None,
        stream: FakeEventStream | None = None,
        error: BaseException | None = None,
        per_url: dict[str, UpstreamReply | FakeEventStream | BaseException] | None = None,
    ) -> None:
        self.reply = reply
        self.stream = stream
        self.error = error
        self.per_url = per_url or {}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def _answer(self, base_url: str, path: str, body: bytes) -> UpstreamReply | FakeEventStream:
        self.calls.append((base_url, path, orjson.loads(body)))
        answer: UpstreamReply | FakeEventStream | BaseException | None
        if base_url in self.per_url:
            answer = self.per_url[base_url]
        else:
            answer = self.error or self.stream or self.reply
        if isinstance(answer, BaseException):
            raise answer
        assert answer is not None, f"FakeUpstream has no answer for {base_url}"
        return answer

    async def post_json(self, base_url: str, path: str, body: bytes) -> UpstreamReply:
        answer = self._answer(base_url, path, body)
        assert isinstance(answer, UpstreamReply), "post_json answered with a stream"
        return answer

    async def open_stream(self, base_url: str, path: str, body: bytes) -> UpstreamReply | FakeEventStream:
        return self._answer(base_url, path, body)

    @property
    def sent(self) -> dict[str, Any]:
        """The JSON body of the last call."""
        return self.calls[-1][2]
