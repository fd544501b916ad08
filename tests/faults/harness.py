"""What the fault matrix runs on: simulators and raw fault engines on loopback, a raw-socket client
whose close is exact, and readers of what the gateway and the engines see.

Every engine here runs in a thread of the test process (its counters are read directly, no HTTP);
the gateway is a real ``python -m gateway serve`` process (:class:`tests.integration.servers.GatewayProcess`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
import yaml
from starlette.applications import Starlette

from engines.sim import SimConfig, create_sim_app
from engines.sim.engine import SimEngine
from tests.integration.servers import GatewayProcess, serve_in_thread, wait_until

try:  # psutil is in the test extras; /proc/net/tcp is the fallback
    import psutil
except ImportError:  # pragma: no cover
    psutil = None


# -- engines --------------------------------------------------------------------------------------


@dataclass
class Sim:
    """An engine simulator under uvicorn in a thread; ``ended`` holds the monotonic time at which
    each of its requests gave back its running slot (finished or aborted)."""

    base_url: str
    port: int
    app: Starlette
    server: uvicorn.Server
    ended: list[float] = field(default_factory=list)

    @property
    def engine(self) -> SimEngine:
        engine: SimEngine = self.app.state.sim.engine
        return engine

    def set_knobs(self, **knobs: Any) -> None:
        """Change this instance's default knobs while it runs (``/health`` reads them per probe;
        chat requests read the instance's knobs they were started with)."""
        server = self.app.state.sim
        server.config = dataclasses.replace(
            server.config, knobs=dataclasses.replace(server.config.knobs, **knobs)
        )

    @property
    def running(self) -> int:
        return self.engine.running

    @property
    def waiting(self) -> int:
        return self.engine.waiting

    @property
    def connections(self) -> int:
        """TCP connections open to it now (the gateway's pool included)."""
        return len(self.server.server_state.connections)

    def snapshot(self) -> Counter[str]:
        """Its finish counters now (``stop``, ``length``, ``abort``), to compare before and after."""
        return Counter(self.engine.finished)


@contextmanager
def serve_sim(config: SimConfig, host: str = "127.0.0.1", port: int = 0) -> Iterator[Sim]:
    """``create_sim_app(config)`` under uvicorn in a thread, on ``host:port`` (0: a free port)."""
    app = create_sim_app(config)
    engine: SimEngine = app.state.sim.engine
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="error", access_log=False, timeout_graceful_shutdown=1)
    )
    with serve_in_thread(server, host, port) as bound:
        sim = Sim(f"http://{host}:{bound}", bound, app, server)
        release = engine.release

        def timed_release(kv_tokens: int, generated: int, finish: str) -> None:
            release(kv_tokens, generated, finish)
            sim.ended.append(time.monotonic())

        engine.release = timed_release  # type: ignore[method-assign]
        yield sim


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    """One vLLM-shaped stream chunk."""
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return orjson.dumps(
        {
            "id": "chatcmpl-fault",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [choice],
        }
    )


def usage_chunk(prompt: int, completion: int) -> bytes:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return orjson.dumps(
        {
            "id": "chatcmpl-fault",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": usage,
        }
    )


def sse(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def http_chunk(data: bytes) -> bytes:
    """One piece of a chunked HTTP body."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)
FAULT_MODES = ("hold", "reset", "bad_sse", "bad_json", "big_event", "endless_event")


class FaultEngine:
    """A raw HTTP/1.1 engine on loopback for the faults the simulator cannot make. ``/health`` and
    ``/metrics`` answer 200 (empty); ``POST /v1/chat/completions`` does what ``mode`` says:

    * ``hold``: reads the request and never answers (no headers), until the connection closes;
    * ``reset``: reads the request and resets the connection (RST) before any header;
    * ``bad_sse``: starts a stream (role, two tokens), then an event whose JSON does not parse, and
      waits for the connection to close;
    * ``bad_json``: a non-streaming 200 whose JSON body does not parse;
    * ``big_event``: a whole stream whose one content chunk is ``event_bytes`` long;
    * ``endless_event``: starts a stream, then ``event_bytes`` of an event that never ends (no blank
      line), 64 KiB at a time, then waits for the connection to close.

    Counters, read from the test thread: ``requests``, ``running`` (chat requests not yet ended),
    ``finished`` (``stop``, ``abort`` when the gateway hung up first, ``reset``, ``error``),
    ``ended`` (monotonic time each chat request ended), ``connections`` (open now) and ``sent``
    (bytes of chat answers written).
    """

    def __init__(self, mode: str, event_bytes: int = 0) -> None:
        assert mode in FAULT_MODES, mode
        self.mode = mode
        self.event_bytes = event_bytes
        self.requests = 0
        self.running = 0
        self.connections = 0
        self.sent = 0
        self.finished: Counter[str] = Counter()
        self.ended: list[float] = []
        self.waiting = 0  # (no queue of its own: for the same checks as a simulator's)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def snapshot(self) -> Counter[str]:
        return Counter(self.finished)

    def __enter__(self) -> FaultEngine:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        )
        self._server = started.result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.die()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def die(self) -> None:
        """Stop listening and drop every connection: from now on, connections are refused."""

        async def down() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(RuntimeError, TimeoutError):
            asyncio.run_coroutine_threadsafe(down(), self._loop).result(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {
                    name.strip().lower(): value.strip()
                    for name, _, value in (line.partition(":") for line in lines[1:] if ":" in line)
                }
                await reader.readexactly(int(headers.get("content-length", "0")))
                if path != "/v1/chat/completions":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    await writer.drain()
                    continue
                self.requests += 1
                self.running += 1
                finish = "error"
                try:
                    finish = await self._chat(reader, writer)
                except (ConnectionError, asyncio.IncompleteReadError):
                    finish = "abort"
                finally:
                    self.running -= 1
                    self.finished[finish] += 1
                    self.ended.append(time.monotonic())
                if finish != "stop":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.connections -= 1
            self._writers.discard(writer)
            writer.transport.abort()

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        self.sent += len(data)
        await writer.drain()

    async def _chat(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """Answer one chat request; returns how it ended."""
        mode = self.mode
        if mode == "hold":
            await _closed(reader)
            return "abort"
        if mode == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return "reset"
        if mode == "bad_json":
            body = b'{"id": "chatcmpl-fault", "choices": [{"message": {"content": "Hel'
            await self._write(
                writer,
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body),
            )
            return "stop"
        await self._write(writer, _STREAM_HEAD + http_chunk(sse(chunk({"role": "assistant", "content": ""}))))
        if mode == "bad_sse":
            for token in ("Hel", "lo"):
                await self._write(writer, http_chunk(sse(chunk({"content": token}))))
            await self._write(writer, http_chunk(b'data: {"choices": [{"delta": {"content": "x"\n\n'))
            await _closed(reader)
            return "abort"
        if mode == "endless_event":
            piece = b"x" * 65536
            await self._write(writer, http_chunk(b'data: {"choices": [{"delta": {"content": "'))
            for _ in range(math.ceil(self.event_bytes / len(piece))):
                await self._write(writer, http_chunk(piece))
            await _closed(reader)
            return "abort"
        # big_event: one content chunk of event_bytes, then a proper end
        await self._write(writer, http_chunk(sse(chunk({"content": "x" * self.event_bytes}))))
        await self._write(writer, http_chunk(sse(chunk({"content": "!"}, "stop"))))
        await self._write(writer, http_chunk(sse(usage_chunk(5, 2)) + b"data: [DONE]\n\n") + b"0\r\n\r\n")
        return "stop"


async def _closed(reader: asyncio.StreamReader) -> None:
    """Wait until the peer closes the connection (anything it sends meanwhile is discarded)."""
    while await reader.read(65536):
        pass


def closed_port() -> int:
    """A loopback port nobody listens on (bound and released: refused until someone takes it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the gateway ----------------------------------------------------------------------------------


def start_gateway(
    workdir: Path,
    models: list[dict[str, Any]],
    env: dict[str, str] | None = None,
    ready: bool = True,
    **extra: Any,
) -> GatewayProcess:
    """A gateway process for ``models`` (``extra``: more top-level config, e.g. ``admission``);
    ``ready``: wait until every model can be served (some cells have a model that never can)."""
    gw = GatewayProcess(workdir, models, env)
    if extra:
        gw.config_path.write_text(yaml.safe_dump({"models": models, **extra}))
    return gw.start(ready=ready)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", re.M)


def metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    """The sum of the gateway's samples of ``name`` whose labels include ``labels``."""
    text = httpx.get(gw.base_url + "/metrics", timeout=5).text
    total = 0.0
    for sample, raw, value in _SAMPLE.findall(text):
        if sample != name:
            continue
        if all(f'{key}="{val}"' in raw for key, val in labels.items()):
            total += float(value)
    return total


def in_flight(gw: GatewayProcess, model: str) -> float:
    return metric(gw, "offload_requests_in_flight", model=model)


def rss_kib(pid: int) -> tuple[int, int]:
    """``VmRSS`` and ``VmHWM`` (peak) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


class PeakRSS:
    """Samples a process's ``VmRSS`` every few milliseconds in a thread while in the ``with`` block:
    ``before`` and ``peak`` in KiB (the kernel's ``VmHWM`` is a lifetime peak: no use for a cell)."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self._pid = pid
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.before = self.peak = rss_kib(pid)[0]

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_kib(self._pid)[0])

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.before) / 1024

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def established_to(pid: int, port: int) -> int:
    """ESTABLISHED TCP connections of process ``pid`` to a loopback ``port``."""
    if psutil is not None:
        return sum(
            1
            for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
        )
    # /proc/net/tcp: remote address is column 3 (hex ip:port), state column 4 (01: ESTABLISHED);
    # without psutil, count every process's (only the gateway talks to the engines in these tests).
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[3].endswith(f":{port:04X}") and cols[4] == "01":
            count += 1
    return count


# -- a client whose close is exact ---------------------------------------------------------------


class RawRequest:
    """One HTTP/1.1 request to the gateway over a plain socket: the test decides when it closes."""

    def __init__(self, port: int, body: dict[str, Any], timeout: float = 10.0) -> None:
        payload = orjson.dumps(body)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        self.received = b""

    def read_until(self, done: Callable[[bytes], bool], timeout: float = 10.0) -> bytes:
        """Read until ``done(received)``; fails the test after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done(self.received):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out reading; got {self.received[-300:]!r}")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"the gateway closed the connection; got {self.received[-300:]!r}")
            self.received += data
        return self.received

    def close(self) -> float:
        """Hang up; returns when (monotonic)."""
        self.sock.close()
        return time.monotonic()


def headers_in(received: bytes) -> bool:
    return b"\r\n\r\n" in received


def events_in(received: bytes) -> int:
    return received.count(b"data: ")


# -- streams read whole ---------------------------------------------------------------------------


@dataclass
class StreamResult:
    """What a streaming client saw."""

    status: int
    text: str = ""
    chunks: int = 0
    error: dict[str, Any] | None = None
    done: bool = False
    finish: list[str] = field(default_factory=list)
    seconds: float = 0.0
    max_gap: float = 0.0
    """The longest silence between two events (a stall, a resume's splice, the wait for an error)."""
    body: bytes = b""

    def describe(self) -> str:
        if self.status != 200:
            return f"status {self.status}"
        if self.error is not None:
            return f"200, {self.chunks} chunks, then in-band error ({self.error.get('code')}) and [DONE]"
        return f"200, whole answer ({self.chunks} chunks, finish {'/'.join(self.finish) or '-'})" + (
            "" if self.done else ", no [DONE]"
        )


def stream(gw: GatewayProcess, body: dict[str, Any], timeout: float = 20.0) -> StreamResult:
    """Stream one chat answer with httpx and take it apart (bounded by ``timeout``: never a hang)."""
    started = time.monotonic()
    with (
        httpx.Client(base_url=gw.base_url, timeout=timeout) as client,
        client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r,
    ):
        result = StreamResult(r.status_code)
        if r.status_code != 200:
            result.body = r.read()
            result.seconds = time.monotonic() - started
            return result
        last = time.monotonic()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            now = time.monotonic()
            result.max_gap, last = max(result.max_gap, now - last), now
            payload = line[6:]
            if payload == "[DONE]":
                result.done = True
                continue
            event = orjson.loads(payload)
            if "error" in event:
                result.error = event["error"]
                continue
            for choice in event.get("choices") or ():
                result.chunks += 1
                result.text += (choice.get("delta") or {}).get("content") or ""
                if choice.get("finish_reason"):
                    result.finish.append(choice["finish_reason"])
    result.seconds = time.monotonic() - started
    return result


@dataclass
class Reply:
    """What a non-streaming client saw."""

    status: int
    body: Any
    seconds: float

    def describe(self) -> str:
        if self.status == 200:
            return "200, whole answer"
        code = self.body.get("error", {}).get("code") if isinstance(self.body, dict) else None
        return f"status {self.status} ({code})"


def post(gw: GatewayProcess, body: dict[str, Any], timeout: float = 20.0) -> Reply:
    """One non-streaming chat request (bounded by ``timeout``)."""
    started = time.monotonic()
    r = httpx.post(gw.base_url + "/v1/chat/completions", json=body, timeout=timeout)
    try:
        answer: Any = r.json()
    except ValueError:
        answer = r.content
    return Reply(r.status_code, answer, time.monotonic() - started)


def p99(values: list[float]) -> float:
    """The 99th percentile (nearest rank): of 20 values, the largest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def settle(check: Callable[[], bool], what: str, timeout: float = 5.0) -> float:
    """Poll ``check`` tightly (5 ms) until true; seconds waited."""
    return wait_until(check, timeout, interval=0.005, what=what)
