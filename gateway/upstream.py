"""The one HTTP client to engines: pooled connections, JSON calls, and SSE streams that abort on close.

Closing the upstream connection is how vLLM learns that a client went away (it aborts the request
and frees its KV cache blocks), so every exit path of a call closes or releases its response at once.
Transport failures become :class:`~gateway.errors.GatewayError` subclasses here, so callers
never see aiohttp exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import aiohttp
import yarl

from gateway.errors import EngineConnectError, EngineError, EngineTimeoutError, GatewayError
from gateway.protocol import paths
from gateway.settings import UpstreamSettings
from gateway.silence import SilenceWatch, Silent

if TYPE_CHECKING:
    from gateway.tracing import EngineCall, Tracing

_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
_DONE = b"[DONE]"
_DRAIN_TIMEOUT = 1.0
_MAX_URLS = 1024
_SIDE_CONNECTIONS = 64  # probes and scrapes: one or two per replica at a time
T = TypeVar("T")
MAX_EVENT_BYTES = 32 * 1024 * 1024
"""The longest SSE event an engine may send (``OFFLOAD_UPSTREAM__MAX_EVENT_BYTES``)."""
KEEPALIVE = b""
"""Yielded by :class:`EventStream` while the engine is silent: time for an SSE keep-alive comment."""


class ProbeResult(enum.Enum):
    """Outcome of one health probe."""

    OK = "ok"
    REFUSED = "refused"  # nothing listens: the engine is certainly down
    FAILED = "failed"  # slow or unhealthy answer: perhaps only busy


@dataclass(slots=True)
class UpstreamReply:
    """A complete (non-streaming) engine answer."""

    status: int
    body: bytes


class EventStream:
    """The ``data:`` payloads of an engine's SSE response, ending at ``[DONE]``.

    Iterating raises :class:`EngineError` when the stream breaks, goes silent for longer than the
    idle timeout, ends without ``[DONE]`` (the engine died mid-answer), or sends an event longer
    than ``max_event`` bytes (it would otherwise be held in memory whole, however long).

    An event that spans many reads is looked for its end in each new read only, and joined once
    when that end comes: its cost grows with its length, not with its length squared (re-scanning
    the whole of it on every read held the event loop, and so every other stream, for seconds).
    """

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        idle_timeout: float,
        keepalive: float | None = None,
        max_event: int = MAX_EVENT_BYTES,
    ) -> None:
        self._response = response
        self._idle_timeout = idle_timeout
        self._max_event = max_event
        # Every `keepalive` seconds of engine silence the stream yields KEEPALIVE (b""), so the
        # transport can send an SSE comment: one timer per stream does it, nothing per event.
        self._wait = min(keepalive, idle_timeout) if keepalive else idle_timeout
        self.finished = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """The payloads one by one (see :meth:`batches`)."""
        async with contextlib.aclosing(self.batches()) as batches:
            async for batch in batches:
                for payload in batch:
                    yield payload

    async def batches(self) -> AsyncGenerator[list[bytes], None]:
        """The payloads that each network read completed, as one list per read; ``[KEEPALIVE]``
        while the engine is silent.

        One list per read is what lets a busy relay send everything one read brought in one write
        (several events arrive together once a gateway falls behind its engines), while a lone
        event, the usual case below saturation, still goes out at once.
        """
        buffer = b""  # the start of an event (line ends normalised) when a read ended inside one
        pending: list[bytes] = []  # the reads since, none of which held the event's end
        held = 0  # bytes of buffer and pending
        tail = b""  # their last bytes
        content = self._response.content
        silent = 0.0
        watch = SilenceWatch(self._wait)
        try:
            while True:
                try:
                    chunk = await watch.read(content.readany())
                except Silent:
                    silent += self._wait
                    if silent >= self._idle_timeout:
                        raise EngineError("the engine stopped sending while streaming") from None
                    yield [KEEPALIVE]
                    continue
                silent = 0.0
                if not chunk:
                    break
                # (not b"\r\n\n": a CRLF line end, which the general path below takes off the payload)
                one_line = (
                    chunk.endswith(b"\n\n") and chunk.count(b"\n") == 2 and not chunk.endswith(b"\r\n\n")
                )
                if one_line and not buffer and chunk.startswith(b"data: "):
                    # The usual read: exactly one event of one line (vLLM writes one per token).
                    payload = chunk[6:-2].lstrip(b" ")
                    if payload == _DONE:
                        self.finished = True
                        return
                    if payload:
                        yield [payload]
                    continue
                if buffer:
                    # Inside an event: does it end in this read? (the last bytes before it count:
                    # a blank line may be split between reads)
                    seam = tail + chunk
                    if b"\n\n" not in (seam.replace(b"\r\n", b"\n") if b"\r" in seam else seam):
                        pending.append(chunk)
                        tail = seam[-3:]
                        held += len(chunk)
                        if held > self._max_event:
                            raise EngineError(f"the engine sent an event longer than {self._max_event} bytes")
                        continue
                    chunk = b"".join((buffer, *pending, chunk))
                    pending.clear()
                buffer = chunk.replace(b"\r\n", b"\n") if b"\r" in chunk else chunk
                *events, buffer = buffer.split(b"\n\n")
                held, tail = len(buffer), buffer[-3:]
                if held > self._max_event:
                    raise EngineError(f"the engine sent an event longer than {self._max_event} bytes")
                got: list[bytes] = []
                for event in events:
                    for line in event.split(b"\n"):
                        if not line.startswith(b"data:"):
                            continue  # comments and other fields
                        payload = line[5:].lstrip(b" ")
                        if payload == _DONE:
                            self.finished = True
                            if got:
                                yield got
                            return
                        if payload:
                            got.append(payload)
                if got:
                    yield got
        except aiohttp.ClientError:
            raise EngineError("the engine connection broke while streaming") from None
        finally:
            watch.stop()
        raise EngineError("the engine ended the stream early")

    def close(self) -> None:
        """Drop the connection unless the stream finished (aborts the engine's unfinished work).
        A finished stream's connection is returned to the pool by :meth:`aclose`."""
        if not self.finished:
            self._response.close()

    async def aclose(self) -> None:
        """Release the connection: back to the pool when the stream finished, else dropped.

        After ``[DONE]`` the engine still sends the end of the chunked body; reading it here (after
        the client has its answer) is what lets the pool reuse the connection instead of opening a
        new one per stream.
        """
        if not self.finished:
            self._response.close()
            return
        try:
            async with asyncio.timeout(_DRAIN_TIMEOUT):
                while await self._response.content.readany():
                    pass  # only the body's end is expected; anything more is discarded
        except (TimeoutError, aiohttp.ClientError, OSError):
            # The answer is whole already: a body end that is slow to come (an engine or a gateway
            # busy with hundreds of streams) or never comes costs the connection, not the answer.
            self._response.close()
            return
        except BaseException:
            self._response.close()
            raise
        self._response.release()


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or :class:`EngineError` as soon as it is known to pass ``limit`` bytes."""
    if response.content_length is not None and response.content_length > limit:
        raise EngineError("the engine's answer is too large")
    if response.content_length is not None:
        return await response.read()  # the length is known and within bounds: one read
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise EngineError("the engine's answer is too large")
        parts.append(chunk)
    return b"".join(parts)


class Upstream:
    """Pooled HTTP client to engines. Create inside the app's lifespan; :meth:`close` on shutdown."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._side_session: aiohttp.ClientSession | None = None
        self._urls: dict[tuple[str, str], yarl.URL] = {}

    def _new_session(self, limit: int) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, ttl_dns_cache=300, enable_cleanup_closed=True),
            timeout=aiohttp.ClientTimeout(total=None, connect=self._settings.connect_timeout),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(),  # engines set no cookies: skip the jar per response
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pool requests to engines go through (``max_connections``)."""
        if self._session is None:
            self._session = self._new_session(self._settings.max_connections)
        return self._session

    @property
    def side_session(self) -> aiohttp.ClientSession:
        """A small pool of its own for health probes and metric scrapes: with every request
        connection busy (a burst of long streams), a probe waiting for one would time out and take
        a healthy replica out of service."""
        if self._side_session is None:
            self._side_session = self._new_session(_SIDE_CONNECTIONS)
        return self._side_session

    def _url(self, base_url: str, path: str) -> yarl.URL:
        """The parsed URL of an engine call, parsed once (aiohttp would parse the string per call)."""
        url = self._urls.get((base_url, path))
        if url is None:
            if len(self._urls) > _MAX_URLS:  # replicas come and go with reloads and DNS: stay bounded
                self._urls.clear()
            url = self._urls[(base_url, path)] = yarl.URL(base_url + path)
        return url

    async def close(self) -> None:
        """Close the pools."""
        for session in (self._session, self._side_session):
            if session is not None:
                await session.close()
        self._session = self._side_session = None

    async def post_json(
        self, base_url: str, path: str, body: bytes, headers: Mapping[str, str] = _JSON_HEADERS
    ) -> UpstreamReply:
        """POST ``body`` and read the whole answer within the request timeout.

        Cancelling the calling task (client gone) closes the connection, aborting the engine's work.
        """
        try:
            async with asyncio.timeout(self._settings.request_timeout):
                async with self.session.post(
                    self._url(base_url, path), data=body, headers=headers
                ) as response:
                    try:
                        data = await _read_bounded(response, self._settings.max_answer_bytes)
                    except BaseException:
                        response.close()
                        raise
                    return UpstreamReply(response.status, data)
        except TimeoutError:
            raise EngineTimeoutError("the engine did not answer in time") from None
        except aiohttp.ClientConnectorError:
            raise EngineConnectError("the engine is unreachable") from None
        except aiohttp.ClientError:
            raise EngineError("the engine connection failed") from None

    async def open_stream(
        self, base_url: str, path: str, body: bytes, headers: Mapping[str, str] = _JSON_HEADERS
    ) -> UpstreamReply | EventStream:
        """POST a streaming request. An engine error status comes back as a complete
        :class:`UpstreamReply`; a 200 as an :class:`EventStream` the caller must ``close()``."""
        try:
            async with asyncio.timeout(self._settings.request_timeout):
                response = await self.session.post(self._url(base_url, path), data=body, headers=headers)
                if response.status != 200:
                    try:
                        return UpstreamReply(
                            response.status, await _read_bounded(response, self._settings.max_answer_bytes)
                        )
                    finally:
                        response.release()
        except TimeoutError:
            raise EngineTimeoutError("the engine did not start answering in time") from None
        except aiohttp.ClientConnectorError:
            raise EngineConnectError("the engine is unreachable") from None
        except aiohttp.ClientError:
            raise EngineError("the engine connection failed") from None
        settings = self._settings
        return EventStream(
            response, settings.stream_idle_timeout, settings.keepalive_interval, settings.max_event_bytes
        )

    async def get_text(self, base_url: str, path: str, timeout: float) -> str | None:
        """``GET`` a small text page (engine metrics); None on any failure."""
        try:
            async with asyncio.timeout(timeout):
                async with self.side_session.get(base_url + path) as response:
                    return await response.text() if response.status == 200 else None
        except (TimeoutError, aiohttp.ClientError, OSError, UnicodeDecodeError):
            return None

    async def probe(self, base_url: str, timeout: float) -> ProbeResult:
        """``GET /health``: OK on 200; REFUSED when nothing listens; FAILED otherwise (slow, 5xx)."""
        try:
            async with asyncio.timeout(timeout):
                async with self.side_session.get(base_url + paths.HEALTH) as response:
                    return ProbeResult.OK if response.status == 200 else ProbeResult.FAILED
        except aiohttp.ClientConnectorError:
            return ProbeResult.REFUSED
        except (TimeoutError, aiohttp.ClientError, OSError):
            return ProbeResult.FAILED


async def _ended_on_failure(call: EngineCall, opening: Awaitable[T]) -> T:
    """Await an engine call; if it fails, end its span (an error, unless cancelled: the client left)."""
    try:
        return await opening
    except GatewayError as exc:
        call.failed(exc.code or "engine_error")
        call.end()
        raise
    except BaseException:
        call.end()
        raise


class TracedUpstream(Upstream):
    """:class:`Upstream` with a client span per engine call, its trace context sent to the engine
    (:mod:`gateway.tracing`). Built instead of a plain one when tracing is on, so that a gateway
    with tracing off runs the plain calls without a single check."""

    def __init__(self, settings: UpstreamSettings, tracing: Tracing) -> None:
        super().__init__(settings)
        self._tracing = tracing

    def _call(self, base_url: str, path: str, headers: Mapping[str, str]) -> EngineCall:
        url = self._url(base_url, path)
        return self._tracing.engine_call(path, url.host, url.port, headers)

    async def post_json(
        self, base_url: str, path: str, body: bytes, headers: Mapping[str, str] = _JSON_HEADERS
    ) -> UpstreamReply:
        call = self._call(base_url, path, headers)
        reply = await _ended_on_failure(call, super().post_json(base_url, path, body, call.headers))
        call.end(reply.status)
        return reply

    async def open_stream(
        self, base_url: str, path: str, body: bytes, headers: Mapping[str, str] = _JSON_HEADERS
    ) -> UpstreamReply | EventStream:
        call = self._call(base_url, path, headers)
        opened = await _ended_on_failure(call, super().open_stream(base_url, path, body, call.headers))
        if isinstance(opened, UpstreamReply):
            call.end(opened.status)
            return opened
        return TracedEventStream(opened, call)


class TracedEventStream(EventStream):
    """An engine stream whose client span gets a ``first_token`` event and ends with the stream.

    It wraps the stream it is given (delegating to it) rather than being built like one, so that
    :class:`Upstream` opens streams the same way whether tracing is on or off.
    """

    def __init__(self, stream: EventStream, call: EngineCall) -> None:  # (no super().__init__: a wrapper)
        self._stream = stream
        self._engine_call = call

    @property
    def finished(self) -> bool:
        """Whether the engine's ``[DONE]`` arrived."""
        return self._stream.finished

    @finished.setter
    def finished(self, value: bool) -> None:
        self._stream.finished = value

    async def batches(self) -> AsyncGenerator[list[bytes], None]:
        call = self._engine_call
        reads = self._stream.batches()
        try:
            async with contextlib.aclosing(reads):
                async for batch in reads:
                    if batch[0]:
                        call.first_token()
                        yield batch
                        break
                    yield batch  # a keep-alive before the first event
                async for batch in reads:  # the rest: relayed as they are, nothing per read
                    yield batch
        except EngineError as exc:
            call.failed(exc.code or "engine_error")
            raise

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._engine_call.end(200)

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._engine_call.end(200)
