"""Test doubles for the engine side of the gateway (no network, no engines), and the routing pieces
wired together as :func:`gateway.app.create_app` wires them."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any

import orjson

from gateway.errors import EngineError
from gateway.metrics import Metrics
from gateway.routing.breaker import Breakers
from gateway.routing.load import Loads
from gateway.routing.router import Router
from gateway.routing.table import Replica, RouteTable
from gateway.services.failover import Failover
from gateway.services.leases import Leases
from gateway.services.on_demand import OnDemand
from gateway.settings import UpstreamSettings
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


Payload = dict[str, Any] | bytes
Item = Payload | list[Payload] | BaseException | None
"""One scripted step of a :class:`FakeEventStream`: a list is several events in one network read."""


def _wire(payload: Payload) -> bytes:
    return payload if isinstance(payload, bytes) else orjson.dumps(payload)


class FakeEventStream(EventStream):
    """A :class:`gateway.upstream.EventStream` without a connection: scripted payloads plus ``close()``.

    Items are dicts (sent as JSON), raw bytes (sent as is), lists of those (events that came in one
    read), exceptions (raised at that point) or ``None`` (wait, like a silent engine, until
    ``close()`` breaks the connection; ``silent`` is set when it gets there).
    """

    def __init__(self, items: Iterable[Item]) -> None:
        # No super().__init__(): there is no aiohttp response behind this stream.
        self._items = list(items)
        self.started = False
        self.finished = False
        self.close_calls = 0
        self.cancelled = False
        self.silent = asyncio.Event()
        self._cut = asyncio.Event()

    async def batches(self) -> AsyncGenerator[list[bytes], None]:
        self.started = True
        try:
            for item in self._items:
                if item is None:
                    self.silent.set()
                    await self._cut.wait()  # as a real stream's read, broken by close()
                    raise EngineError("the engine connection broke while streaming")
                elif isinstance(item, BaseException):
                    raise item
                elif isinstance(item, list):
                    yield [_wire(payload) for payload in item]
                else:
                    yield [_wire(item)]
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.finished = True

    def close(self) -> None:
        self.close_calls += 1
        if not self.finished:
            self._cut.set()

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


class FakeEngines:
    """An :class:`gateway.services.engine_control.EngineControl` whose engines start (or not) as told.

    ``gate``: ``ensure_running`` waits for it before answering (a slow load). ``loading`` is set once
    a load has begun; ``cancelled`` counts loads abandoned while waiting.
    """

    def __init__(self, startable: set[str], starts: bool = True, gate: asyncio.Event | None = None) -> None:
        self.startable = startable
        self.starts = starts
        self.gate = gate
        self.started: list[str] = []
        self.timeouts: list[float] = []
        self.active: dict[str, int] = {}
        self.loading = asyncio.Event()
        self.cancelled = 0

    def can_start(self, base_url: str) -> bool:
        return base_url in self.startable

    async def ensure_running(self, base_url: str, timeout: float) -> bool:
        self.started.append(base_url)
        self.timeouts.append(timeout)
        self.loading.set()
        if self.gate is not None:
            try:
                await self.gate.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if self.starts:
            self.startable.discard(base_url)
        return self.starts

    def begin(self, base_url: str) -> None:
        self.active[base_url] = self.active.get(base_url, 0) + 1

    def end(self, base_url: str) -> None:
        self.active[base_url] -= 1

    def describe(self) -> list[dict[str, Any]]:
        return []

    async def act(self, name: str, action: str) -> None:
        raise KeyError(name)

    def log_tail(self, name: str, lines: int) -> list[str]:
        raise KeyError(name)


@dataclasses.dataclass
class Wiring:
    """The routing pieces over one table, sharing one set of breakers and loads."""

    breakers: Breakers
    loads: Loads
    router: Router
    leases: Leases
    failover: Failover
    on_demand: OnDemand | None


def wire(
    table: RouteTable,
    metrics: Metrics,
    *,
    breakers: Breakers | None = None,
    engines: FakeEngines | None = None,
    retry_after: int = 1,
    max_retries: int = 2,
    deadline: float = 600.0,
    on_demand_wait: float = 600.0,
    on_demand_max_waiting: int = 256,
) -> Wiring:
    """Breakers (default: every replica UNKNOWN), loads, router, leases, failover and, with
    ``engines``, on-demand starts, wired as the app wires them."""
    breakers = breakers or Breakers()
    loads = Loads()
    router = Router(table, breakers, loads, retry_after)
    leases = Leases(breakers, loads, engines, retry_after)
    on_demand = None
    if engines is not None:
        settings = UpstreamSettings(
            on_demand_wait=on_demand_wait, on_demand_max_waiting=on_demand_max_waiting
        )
        on_demand = OnDemand(router, breakers, engines, settings, retry_after)
    failover = Failover(router, leases, metrics, on_demand, max_retries, deadline)
    return Wiring(breakers, loads, router, leases, failover, on_demand)


async def eventually(condition: Callable[[], bool], timeout: float = 2.0, what: str = "a condition") -> None:
    """Wait until ``condition()`` holds, polling the event loop; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.001)
