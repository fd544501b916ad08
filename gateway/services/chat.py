"""Chat completions: validate, choose version and replica, relay to the engine, normalise the answer."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.config import AdmissionConfig
from gateway.errors import EngineError, GatewayError
from gateway.metrics import Metrics
from gateway.protocol import paths
from gateway.protocol.chat import FINISH_REASONS, ChatCompletionRequest
from gateway.protocol.errors import ErrorDetail, ErrorResponse
from gateway.record import RequestRecord
from gateway.routing.router import Router
from gateway.routing.table import Replica, Route, Version
from gateway.routing.versions import choose_shadows
from gateway.services.admission import Admission, Gate
from gateway.services.caps import Caps
from gateway.services.failover import Failover, resolve
from gateway.services.leases import Leases
from gateway.services.parsing import parse_body
from gateway.services.replies import engine_error, post_answer
from gateway.services.resume import Resumer
from gateway.services.shadow import ShadowSender
from gateway.silence import SilenceWatch, Silent
from gateway.upstream import KEEPALIVE, EventStream, Upstream

PATH = paths.CHAT_COMPLETIONS
_OK_FINISH = FINISH_REASONS | {None}


def prefix_key(request: ChatCompletionRequest, chars: int) -> str:
    """A short digest of the prompt's first ``chars`` characters (for prefix affinity)."""
    parts: list[str] = []
    size = 0
    for message in request.messages:
        content = message.content
        text = content if isinstance(content, str) else orjson.dumps(content).decode() if content else ""
        parts.append(f"{message.role}\x1e{text}\x1d")
        size += len(parts[-1])
        if size >= chars:
            break
    return hashlib.blake2b("".join(parts)[:chars].encode(), digest_size=12).hexdigest()


class ChatService:
    """Serves ``/v1/chat/completions`` for every configured chat model."""

    def __init__(
        self,
        router: Router,
        failover: Failover,
        leases: Leases,
        upstream: Upstream,
        metrics: Metrics,
        shadows: ShadowSender,
        caps: Caps,
        admission: Admission | None = None,
        resumer: Resumer | None = None,
    ) -> None:
        self._resumer = resumer
        self._caps = caps
        self._admission = admission or Admission(AdmissionConfig(), metrics)
        self._router = router
        self._failover = failover
        self._leases = leases
        self._upstream = upstream
        self._metrics = metrics
        self._shadows = shadows

    def prepare(self, body: bytes, record: RequestRecord) -> tuple[dict[str, Any], ChatCompletionRequest]:
        """Parse and validate a request body; fills in what the record needs to know early."""
        data, request = parse_body(body, ChatCompletionRequest)
        record.model = request.model
        record.stream = request.stream
        self._caps.check_chat(request, record.caps)
        return data, request

    def _target(self, call: _Call, headers: Mapping[str, str]) -> tuple[Route, Version, str | None]:
        """Route, version (sticky by session), prefix key; and the shadow copies, sent now."""
        request, record = call.request, call.record
        route, choice = resolve(
            self._router, self._metrics, record, request.model, "chat", request.user, headers
        )
        key = prefix_key(request, route.prefix_chars) if choice.version.policy == "prefix_affinity" else None
        shadows = choose_shadows(route, choice.version, record.request_id)
        if shadows:
            self._shadows.send(route, shadows, PATH, call.data)
        return route, choice.version, key

    async def complete(
        self,
        data: dict[str, Any],
        request: ChatCompletionRequest,
        record: RequestRecord,
        headers: Mapping[str, str],
    ) -> bytes:
        """A non-streaming completion: the engine's JSON answer, normalised."""
        route, version, key = self._target(_Call(data, request, record), headers)

        async def attempt(replica: Replica) -> dict[str, Any]:
            answer = await post_answer(self._upstream, replica, PATH, data)
            if _aborted(answer.get("choices") or ()):
                raise EngineError("The engine aborted the request.")
            return answer

        gate = await self._admission.enter(version, record)
        try:
            answer, used = await self._failover.run(route, version, record, attempt, key)
        finally:
            if gate is not None:
                gate.leave(record.key or "")
        usage = answer.get("usage") or {}
        record.prompt_tokens = usage.get("prompt_tokens")
        record.completion_tokens = usage.get("completion_tokens")
        record.public_model = answer["model"] = used.public_id
        return orjson.dumps(answer)

    async def open_stream(
        self,
        data: dict[str, Any],
        request: ChatCompletionRequest,
        record: RequestRecord,
        headers: Mapping[str, str],
        keepalive: float,
    ) -> ChatStream:
        """Start a stream. What fails before the engine starts answering raises here (a real status,
        after failover); what fails later becomes an in-band error event.

        When the request must first wait, for a slot in the version's fair queue or for an engine
        loaded on demand (minutes), the stream comes back at once with :attr:`ChatStream.waiting`
        set and opens while it is iterated: it yields :data:`~gateway.upstream.KEEPALIVE` every
        ``keepalive`` seconds meanwhile. A failure before the first keep-alive raises from the
        iteration (the transport can still answer with its status); after one, it arrives in-band.
        """
        call = _Call(data, request, record, keepalive)
        route, version, key = self._target(call, headers)
        # Ask for usage even when the client did not, for accounting; that chunk is then dropped.
        data["stream_options"] = {**(data.get("stream_options") or {}), "include_usage": True}
        stream = ChatStream()
        gate = self._admission.gate(version)
        tenant = record.key or ""
        if gate is not None and gate.try_enter(tenant, record.weight):
            stream.admitted(gate, tenant)
            gate = None  # nothing to wait for
        if gate is not None or self._failover.needs_start(route, version):
            stream.events = self._opening(stream, route, version, key, call, keepalive, gate)
            stream.waiting = True
            return stream
        try:
            await self._open(stream, route, version, key, call)
        except BaseException:
            await stream.aclose()  # the caller never sees this stream: free its slot here
            raise
        return stream

    async def _open(
        self, stream: ChatStream, route: Route, version: Version, key: str | None, call: _Call
    ) -> None:
        """Open the engine stream (with failover) and attach its relay to ``stream``."""

        async def attempt(replica: Replica) -> tuple[EventStream, Replica]:
            opened = await self._upstream.open_stream(replica.base_url, PATH, _body(call.data, replica))
            if not isinstance(opened, EventStream):
                raise engine_error(opened.status, opened.body)
            return opened, replica

        (upstream, replica), used = await self._failover.run(route, version, call.record, attempt, key)
        call.record.public_model = used.public_id
        release = self._leases.hold(replica)
        stream.attach(self._relay(stream, upstream, route, used, call, replica), upstream, release)

    async def _opening(
        self,
        stream: ChatStream,
        route: Route,
        version: Version,
        key: str | None,
        call: _Call,
        keepalive: float,
        gate: Gate | None,
    ) -> AsyncGenerator[list[bytes], None]:
        """Open the stream while it is iterated: wait for a slot at ``gate`` (if given), then open
        (loading an on-demand engine if need be), with keep-alives meanwhile (the same silence watch
        as a started stream's); then the relay's payloads."""

        async def open_when_admitted() -> None:
            if gate is not None:
                tenant = call.record.key or ""
                await gate.wait(tenant, call.record.weight)
                stream.admitted(gate, tenant)
            await self._open(stream, route, version, key, call)

        opening = asyncio.ensure_future(open_when_admitted())
        pinged = False
        try:
            async with contextlib.aclosing(_pings_until(opening, keepalive)) as pings:
                async for ping in pings:
                    pinged = True
                    yield [ping]
        except GatewayError as exc:
            if not pinged:
                raise  # nothing sent yet: the client gets the error's own status
            call.record.error_type = exc.code
            yield [in_band(exc)]
            return
        relay = stream.relay
        assert relay is not None  # attached by _open
        async for batch in relay:
            yield batch

    async def _relay(
        self,
        stream: ChatStream,
        upstream: EventStream,
        route: Route,
        used: Version,
        call: _Call,
        replica: Replica,
    ) -> AsyncGenerator[list[bytes], None]:
        """Engine events -> client events (JSON payloads; framing is the transport's job), one list
        per engine read (:meth:`~gateway.upstream.EventStream.batches`). A stream that breaks
        mid-answer is continued on another replica when it can be (:mod:`gateway.services.resume`)."""
        record, include_usage, public_id = call.record, call.request.include_usage, used.public_id
        labels = (route.model, used.label, replica.id)
        itl = self._metrics.itl.labels(*labels)
        splice = None if self._resumer is None else self._resumer.applies(used, call.data)
        # A stream that can resume is cut as soon as a probe takes its replica down: it continues
        # elsewhere at once instead of waiting out the idle timeout of an engine gone silent.
        unwatch = None if splice is None else self._leases.watch(replica, upstream.close)
        broken: set[str] = set()
        last = 0.0
        try:
            while True:
                try:
                    async for batch in upstream.batches():
                        out: list[bytes] = []  # what this read gives the client: one write
                        unreadable = False  # raised after the events before it are out
                        for payload in batch:
                            if not payload:  # engine silent: let the transport send a keep-alive
                                out.append(payload)
                                continue
                            try:
                                event = orjson.loads(payload)
                            except orjson.JSONDecodeError:
                                unreadable = True
                                break
                            if not isinstance(event, dict):
                                continue
                            if "error" in event:
                                record.error_type = "engine_error"
                                out.append(in_band(engine_error(502, payload)))
                                yield out
                                return
                            choices = event.get("choices")
                            spliced = splice is not None and splice.resumes > 0
                            if not choices:
                                usage = event.get("usage")
                                if usage:
                                    if spliced:
                                        assert splice is not None
                                        usage = event["usage"] = splice.usage(event, usage)
                                    record.prompt_tokens = usage.get("prompt_tokens")
                                    record.completion_tokens = usage.get("completion_tokens")
                                    if not include_usage:
                                        continue
                            elif _aborted(choices):
                                record.error_type = "engine_aborted"
                                out.append(in_band(EngineError("The engine aborted the request.")))
                                yield out
                                return
                            elif splice is not None:
                                if spliced:
                                    if not splice.adopt(event, choices):
                                        continue  # the continuation's own role chunk
                                    if splice.broke_at is not None and self._resumer is not None:
                                        self._resumer.resumed(route, used, splice)
                                splice.note(event, choices[0])
                            now = time.perf_counter()
                            if record.ttft_s is None:
                                record.ttft_s = now - record.started
                                self._metrics.child(self._metrics.ttft, *labels).observe(record.ttft_s)
                            else:
                                itl.observe(now - last)
                            last = now
                            if spliced or event.get("model") != public_id:
                                event["model"] = public_id
                                payload = orjson.dumps(event)
                            out.append(payload)
                        if out:
                            yield out
                        if unreadable:
                            raise EngineError("The engine sent an unreadable event.")
                    self._leases.succeeded(replica)
                    return
                except EngineError as exc:  # broke mid-answer: continue elsewhere, or end in-band
                    self._leases.failed(replica)
                    if splice is None or self._resumer is None:
                        raise
                    broken.add(replica.id)
                    reopening = asyncio.ensure_future(
                        self._resumer.reopen(route, used, record, call.data, splice, broken)
                    )
                    async with contextlib.aclosing(_pings_until(reopening, call.keepalive)) as pings:
                        async for ping in pings:
                            yield [ping]
                    opened = reopening.result()
                    if opened is None:
                        raise exc from None
                    upstream, replica = opened
                    stream.swap(upstream, self._leases.hold(replica))
                    if unwatch is not None:
                        unwatch()
                        unwatch = self._leases.watch(replica, upstream.close)
                    record.replica = replica.id
                    labels = (route.model, used.label, replica.id)
                    itl = self._metrics.itl.labels(*labels)
        except GatewayError as exc:
            record.error_type = exc.code
            if not isinstance(exc, EngineError):  # (an engine's break was counted where it was caught)
                self._leases.failed(replica)
            yield [in_band(exc)]
        finally:
            if unwatch is not None:
                unwatch()
            upstream.close()


@dataclass(slots=True)
class _Call:
    """One chat request as the service carries it through its steps."""

    data: dict[str, Any]
    request: ChatCompletionRequest
    record: RequestRecord
    keepalive: float = 15.0
    """Seconds between pings while the stream waits (a slot, an engine loading, a resume)."""


def _aborted(choices: Iterable[dict[str, Any]]) -> bool:
    """Whether a choice finished for a reason other than the normal ones (vLLM's ``abort``, ``error``)."""
    # A loop, not any() over a generator: this runs for every event of every stream, and the
    # generator costs a frame per call (measured in benchmarks.own_cost).
    for choice in choices:  # noqa: SIM110
        if choice.get("finish_reason") not in _OK_FINISH:
            return True
    return False


async def _pings_until(task: asyncio.Future[Any], keepalive: float) -> AsyncGenerator[bytes, None]:
    """:data:`~gateway.upstream.KEEPALIVE` every ``keepalive`` seconds until ``task`` is done (the same
    silence watch as a started stream's); its error is raised; it is cancelled if iteration stops."""
    watch = SilenceWatch(keepalive)
    try:
        while True:
            try:
                await watch.read(asyncio.shield(task))
                return
            except Silent:
                yield KEEPALIVE
    finally:
        watch.stop()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _body(data: dict[str, Any], replica: Replica) -> bytes:
    return orjson.dumps({**data, "model": replica.served_name})


class ChatStream:
    """The one stream type out of the chat service: :meth:`batches` gives the client payloads as one
    list per engine read (a transport sends each list as one write), iterating gives them one by one
    (an empty payload is :data:`~gateway.upstream.KEEPALIVE`); :meth:`aclose` always frees the engine.

    ``aclose`` is safe to call more than once and also works when iteration never began (a client
    that left before the first byte), which a bare async generator's ``aclose`` would not cover.
    """

    __slots__ = ("_gate", "_release", "_tenant", "_upstream", "events", "relay", "waiting")

    def __init__(self) -> None:
        self.events: AsyncGenerator[list[bytes], None] | None = None
        self.relay: AsyncGenerator[list[bytes], None] | None = None
        self.waiting = False
        """True when the stream must wait (a queue slot, an engine loading) before the engine
        answers: the transport starts the response with the first payload, not at once."""
        self._upstream: EventStream | None = None
        self._release: Callable[[], None] | None = None
        self._gate: Gate | None = None
        self._tenant = ""

    def swap(self, upstream: EventStream, release: Callable[[], None]) -> None:
        """A resumed stream's new engine connection and lease, in place of the broken one's."""
        old, self._upstream = self._upstream, upstream
        if old is not None:
            old.close()
        previous, self._release = self._release, release
        if previous is not None:
            previous()

    def admitted(self, gate: Gate, tenant: str) -> None:
        """The stream holds a slot of ``gate`` until it is closed."""
        self._gate, self._tenant = gate, tenant

    def attach(
        self, relay: AsyncGenerator[list[bytes], None], upstream: EventStream, release: Callable[[], None]
    ) -> None:
        """The engine stream is open: its relay, its connection and its in-flight lease."""
        self.relay, self._upstream, self._release = relay, upstream, release
        if self.events is None:
            self.events = relay

    def batches(self) -> AsyncIterator[list[bytes]]:
        """The client payloads, one list per engine read (or per keep-alive, or in-band error)."""
        assert self.events is not None, "a stream is opened or opening before it is iterated"
        return self.events

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for batch in self.batches():
            for payload in batch:
                yield payload

    async def aclose(self) -> None:
        """Stop relaying and close the engine connection (aborting unfinished work)."""
        try:
            if self.events is not None:
                await self.events.aclose()
            if self.relay is not None and self.relay is not self.events:
                await self.relay.aclose()
        finally:
            try:
                if self._upstream is not None:
                    await self._upstream.aclose()
            finally:
                release, self._release = self._release, None
                if release is not None:
                    release()
                gate, self._gate = self._gate, None
                if gate is not None:
                    gate.leave(self._tenant)


def in_band(error: GatewayError) -> bytes:
    """The ``data: {"error": ...}`` payload sent when a stream fails after its first byte."""
    body = ErrorResponse(
        error=ErrorDetail(message=error.message, type=error.type, param=error.param, code=error.code)
    )
    return orjson.dumps(body.model_dump())
