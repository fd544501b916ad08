"""The engine client: SSE parsing on a scripted response, and real calls to loopback ports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import aiohttp
import pytest
from aiohttp import web

from gateway import upstream as upstream_module
from gateway.errors import EngineConnectError, EngineError, EngineTimeoutError
from gateway.settings import UpstreamSettings
from gateway.upstream import EventStream, ProbeResult, Upstream, UpstreamReply
from tests.unit.fakes import closed_port


class ScriptedContent:
    def __init__(self, chunks: Sequence[bytes | BaseException | None]) -> None:
        self._chunks = list(chunks)

    async def readany(self) -> bytes:
        if not self._chunks:
            return b""
        item = self._chunks.pop(0)
        if item is None:
            await asyncio.sleep(30)
            return b""
        if isinstance(item, BaseException):
            raise item
        return item


class ScriptedResponse:
    """Only what EventStream uses of an aiohttp response."""

    def __init__(self, chunks: Sequence[bytes | BaseException | None]) -> None:
        self.content = ScriptedContent(chunks)
        self.closed = False
        self.released = False

    def close(self) -> None:
        self.closed = True

    def release(self) -> None:
        self.released = True


def event_stream(
    chunks: Sequence[bytes | BaseException | None], idle: float = 5.0
) -> tuple[EventStream, ScriptedResponse]:
    response = ScriptedResponse(chunks)
    return EventStream(response, idle), response  # type: ignore[arg-type]


async def read_all(stream: EventStream) -> list[bytes]:
    return [payload async for payload in stream]


async def test_event_stream_yields_data_payloads_until_done() -> None:
    stream, _ = event_stream([b'data: {"a":1}\n\ndata: {"b":2}\n\n', b"data: [DONE]\n\n"])

    assert await read_all(stream) == [b'{"a":1}', b'{"b":2}']
    assert stream.finished is True


async def test_event_stream_joins_events_split_across_reads() -> None:
    stream, _ = event_stream([b"da", b'ta: {"a"', b":1}\n", b"\ndata:", b" [DONE]\n\n"])

    assert await read_all(stream) == [b'{"a":1}']


async def test_event_stream_keeps_order_across_whole_and_split_events() -> None:
    reads = [
        b'data: {"a":1}\n\n',
        b'data: {"b"',
        b":2}\n\n",
        b"data: \n\n",
        b": ping\n\n",
        b'data: {"c":3}\n\n',
        b'data: {"d":4}\n\ndata: {"e":5}\n\n',
        b"data: [DONE]\n\n",
    ]
    stream, _ = event_stream(reads)

    assert await read_all(stream) == [b'{"a":1}', b'{"b":2}', b'{"c":3}', b'{"d":4}', b'{"e":5}']
    assert stream.finished is True


async def test_event_stream_batches_are_the_events_of_one_read_each() -> None:
    reads = [
        b'data: {"a":1}\n\n',
        b'data: {"b":2}\n\ndata: {"c":3}\n\ndata: {"d"',
        b":4}\n\n: ping\n\n",
        b'data: {"e":5}\n\ndata: [DONE]\n\n',
    ]
    stream, _ = event_stream(reads)

    batches = [batch async for batch in stream.batches()]

    assert batches == [[b'{"a":1}'], [b'{"b":2}', b'{"c":3}'], [b'{"d":4}'], [b'{"e":5}']]
    assert stream.finished is True


async def test_event_stream_accepts_crlf_and_no_space_after_colon() -> None:
    stream, _ = event_stream([b'data:{"a":1}\r\n\r', b"\ndata: [DONE]\r\n\r\n"])

    assert await read_all(stream) == [b'{"a":1}']


async def test_event_stream_skips_comments_and_other_fields() -> None:
    stream, _ = event_stream([b': ping\n\nevent: message\ndata: {"a":1}\n\nid: 7\n\ndata: [DONE]\n\n'])

    assert await read_all(stream) == [b'{"a":1}']


async def test_event_stream_that_ends_without_done_is_an_engine_error() -> None:
    stream, _ = event_stream([b'data: {"a":1}\n\n'])

    received: list[bytes] = []
    with pytest.raises(EngineError, match="ended the stream early"):
        async for payload in stream:
            received.append(payload)
    assert received == [b'{"a":1}']
    assert stream.finished is False


async def test_event_stream_silent_past_the_idle_timeout_is_an_engine_error() -> None:
    stream, _ = event_stream([b'data: {"a":1}\n\n', None], idle=0.02)

    with pytest.raises(EngineError, match="stopped sending"):
        await read_all(stream)


async def test_event_stream_broken_connection_is_an_engine_error() -> None:
    stream, _ = event_stream([b'data: {"a":1}\n\n', aiohttp.ClientPayloadError("reset")])

    with pytest.raises(EngineError, match="broke"):
        await read_all(stream)


async def test_aclose_releases_a_finished_stream_and_drops_an_unfinished_one() -> None:
    finished, finished_response = event_stream([b"data: [DONE]\n\n"])
    await read_all(finished)
    unfinished, unfinished_response = event_stream([b'data: {"a":1}\n\n'])

    finished.close()  # a no-op once finished: the connection goes back to the pool in aclose
    unfinished.close()
    await finished.aclose()

    assert (finished_response.released, finished_response.closed) == (True, False)
    assert (unfinished_response.released, unfinished_response.closed) == (False, True)


async def test_aclose_drops_a_finished_stream_whose_engine_keeps_the_body_open() -> None:
    finished, response = event_stream([b"data: [DONE]\n\n", None])  # None: silence after [DONE]
    await read_all(finished)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(finished.aclose(), 0.05)  # aclose's own drain limit is longer

    assert response.closed and not response.released


async def test_aclose_past_its_own_limit_or_on_a_broken_body_end_drops_the_connection_quietly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The answer was whole at [DONE]: a body end that does not come in time (a busy engine or gateway)
    or breaks costs the connection, and never ends the client's response with an error."""
    monkeypatch.setattr(upstream_module, "_DRAIN_TIMEOUT", 0.05)
    for after_done in (None, aiohttp.ClientPayloadError("reset")):
        finished, response = event_stream([b"data: [DONE]\n\n", after_done])
        await read_all(finished)
        await finished.aclose()  # no exception
        assert response.closed and not response.released


# --- real HTTP on loopback -----------------------------------------------------------------------


class EngineLog:
    """What the engine stand-in saw: the client port of each request, and requests whose client hung
    up before the answer was complete (vLLM aborts those)."""

    def __init__(self) -> None:
        self.peer_ports: list[int] = []
        self.abandoned = asyncio.Event()


@pytest.fixture
def engine_log() -> EngineLog:
    return EngineLog()


@pytest.fixture
async def engine(engine_log: EngineLog) -> AsyncIterator[str]:
    """A tiny engine stand-in on a free loopback port."""

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="")

    async def chat(request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername")  # type: ignore[union-attr]
        engine_log.peer_ports.append(peer[1])
        try:
            return await answer(request)
        except (asyncio.CancelledError, ConnectionResetError):  # the client hung up
            engine_log.abandoned.set()
            raise

    async def answer(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("fail"):
            return web.json_response(
                {"error": {"message": "bad", "type": "BadRequestError", "code": 400}}, status=400
            )
        if body.get("slow"):
            await asyncio.sleep(2)
        if "huge" in body:  # an answer of 100 KB, with its length announced or chunked
            if body["huge"] == "sized":
                return web.json_response({"pad": "x" * 100_000})
            huge = web.StreamResponse(headers={"Content-Type": "application/json"})
            huge.enable_chunked_encoding()
            await huge.prepare(request)
            for _ in range(100):
                await huge.write(b"x" * 1000)
            return huge
        if not body.get("stream"):
            return web.json_response({"echo": body})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if body.get("long"):  # one event every 10 ms for five seconds
            for n in range(500):
                await response.write(b'data: {"n":%d}\n\n' % n)
                await asyncio.sleep(0.01)
        await response.write(b'data: {"n":1}\n\ndata: [DONE]\n\n')
        await asyncio.sleep(0.02)  # the body's end comes later, as from a busy engine
        return response

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", chat)
    # A short shutdown: the slow handler is cancelled instead of awaited at clean-up. Handlers are
    # cancelled when their client hangs up, as vLLM aborts such requests.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    client = Upstream(UpstreamSettings(connect_timeout=1, request_timeout=0.3))
    try:
        yield client
    finally:
        await client.close()


async def test_post_json_returns_status_and_body(engine: str, upstream: Upstream) -> None:
    reply = await upstream.post_json(engine, "/v1/chat/completions", b'{"x": 1}')

    assert reply.status == 200
    assert b'"echo"' in reply.body


async def test_post_json_relays_an_error_status(engine: str, upstream: Upstream) -> None:
    reply = await upstream.post_json(engine, "/v1/chat/completions", b'{"fail": true}')

    assert reply.status == 400


@pytest.mark.parametrize("framing", ["sized", "chunked"])
async def test_an_answer_past_max_answer_bytes_is_an_engine_error(engine: str, framing: str) -> None:
    bounded = Upstream(UpstreamSettings(request_timeout=5, max_answer_bytes=64 * 1024))
    fits = Upstream(UpstreamSettings(request_timeout=5, max_answer_bytes=128 * 1024))
    body = b'{"huge": "%s"}' % framing.encode()
    try:
        with pytest.raises(EngineError, match="too large"):
            await bounded.post_json(engine, "/v1/chat/completions", body)
        reply = await fits.post_json(engine, "/v1/chat/completions", body)
        assert reply.status == 200 and len(reply.body) >= 100_000
    finally:
        await bounded.close()
        await fits.close()


async def test_post_json_past_the_request_timeout_is_an_engine_timeout(
    engine: str, upstream: Upstream
) -> None:
    with pytest.raises(EngineTimeoutError):
        await upstream.post_json(engine, "/v1/chat/completions", b'{"slow": true}')


async def test_open_stream_returns_an_event_stream_on_200(engine: str, upstream: Upstream) -> None:
    stream = await upstream.open_stream(engine, "/v1/chat/completions", b'{"stream": true}')

    assert isinstance(stream, EventStream)
    try:
        assert await read_all(stream) == [b'{"n":1}']
    finally:
        stream.close()


async def test_finished_streams_reuse_one_engine_connection(
    engine: str, engine_log: EngineLog, upstream: Upstream
) -> None:
    for _ in range(3):
        stream = await upstream.open_stream(engine, "/v1/chat/completions", b'{"stream": true}')
        assert isinstance(stream, EventStream)
        assert await read_all(stream) == [b'{"n":1}']
        await stream.aclose()

    assert len(engine_log.peer_ports) == 3
    assert len(set(engine_log.peer_ports)) == 1  # one keep-alive connection, not one per stream


async def test_closing_an_unfinished_stream_hangs_up_on_the_engine(
    engine: str, engine_log: EngineLog, upstream: Upstream
) -> None:
    stream = await upstream.open_stream(engine, "/v1/chat/completions", b'{"stream": true, "long": true}')
    assert isinstance(stream, EventStream)
    assert await anext(aiter(stream)) == b'{"n":0}'

    await stream.aclose()

    await asyncio.wait_for(engine_log.abandoned.wait(), 1)


async def test_cancelling_a_call_hangs_up_on_the_engine(
    engine: str, engine_log: EngineLog, upstream: Upstream
) -> None:
    """What a client leaving does to the engine call serving it (some HTTP clients finish the call anyway)."""
    call = asyncio.ensure_future(upstream.post_json(engine, "/v1/chat/completions", b'{"slow": true}'))
    async with asyncio.timeout(5):
        while not engine_log.peer_ports:  # noqa: ASYNC110 - the stand-in records ports in a list, polled
            await asyncio.sleep(0.005)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    await asyncio.wait_for(engine_log.abandoned.wait(), 1)


async def test_open_stream_returns_a_complete_reply_on_an_error_status(
    engine: str, upstream: Upstream
) -> None:
    reply = await upstream.open_stream(engine, "/v1/chat/completions", b'{"stream": true, "fail": true}')

    assert isinstance(reply, UpstreamReply)
    assert reply.status == 400
    assert b"BadRequestError" in reply.body


async def test_calls_to_a_closed_port_are_engine_connect_errors(upstream: Upstream) -> None:
    url = f"http://127.0.0.1:{closed_port()}"

    with pytest.raises(EngineConnectError) as info:
        await upstream.post_json(url, "/v1/chat/completions", b"{}")
    with pytest.raises(EngineConnectError):
        await upstream.open_stream(url, "/v1/chat/completions", b"{}")

    assert "127.0.0.1" not in info.value.message
    assert info.value.status == 503


async def test_probe_tells_ok_refused_and_failed_apart(engine: str, upstream: Upstream) -> None:
    assert await upstream.probe(engine, timeout=1) is ProbeResult.OK
    assert await upstream.probe(f"http://127.0.0.1:{closed_port()}", timeout=1) is ProbeResult.REFUSED
    # A path that answers 404 is not a healthy engine, but it is reachable.
    assert await upstream.probe(engine + "/nothing", timeout=1) is ProbeResult.FAILED


async def test_probes_get_through_while_every_request_connection_is_busy(engine: str) -> None:
    # One request connection, held by an open stream: a probe through the same pool would wait for
    # it and time out, taking a healthy replica out of service.
    upstream = Upstream(UpstreamSettings(max_connections=1, request_timeout=10))
    try:
        stream = await upstream.open_stream(engine, "/v1/chat/completions", b'{"stream": true, "long": true}')
        assert isinstance(stream, EventStream)
        try:
            assert await upstream.probe(engine, timeout=1) is ProbeResult.OK
            assert await upstream.get_text(engine, "/health", timeout=1) == ""
            with pytest.raises(TimeoutError):  # the request pool is indeed full
                await asyncio.wait_for(upstream.post_json(engine, "/v1/chat/completions", b"{}"), 0.3)
        finally:
            await stream.aclose()
    finally:
        await upstream.close()
