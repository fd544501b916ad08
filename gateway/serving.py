"""The HTTP server around the gateway: uvicorn, with the bounds on request heads it lacks and the
steps of a graceful shutdown (:mod:`gateway.drain`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.drain import Drain

_log = structlog.get_logger("offload.main")
_SOCKET_MODE = 0o660  # owner and group: an app container in the socket's group may connect
_BACKLOG = 2048  # uvicorn's default


class ListenError(Exception):
    """The gateway cannot listen where it was told to (the message says why and where)."""


def bind_tcp(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 when ``host`` is an IPv6 address);
    ``reuse_port``: one of several on the port, among which the kernel spreads connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=_BACKLOG, reuse_port=reuse_port)
    except OSError as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def bind_unix(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0660. A socket file nobody listens on (left by a
    killed run) is replaced; a live one, or a path that is not a socket, is refused."""
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ListenError(f"refusing to replace {path}: it exists and is not a socket")
        if _answers(path):
            raise ListenError(f"{path} is in use: another server listens on it")
        path.unlink()  # stale: its server is gone
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~_SOCKET_MODE)  # created with the mode at once, never wider
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, _SOCKET_MODE)
    sock.listen(_BACKLOG)
    return sock


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


@contextlib.contextmanager
def unix_listener(path: Path) -> Iterator[socket.socket]:
    """A listening Unix socket at ``path`` (:func:`bind_unix`); at exit closed, and its file removed
    if it is still ours (not replaced by a later server's)."""
    sock = bind_unix(path)
    inode = path.lstat().st_ino
    try:
        yield sock
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            if path.lstat().st_ino == inode:
                path.unlink()


@contextlib.contextmanager
def listeners(host: str, port: int | None, uds: Path | None) -> Iterator[list[socket.socket]]:
    """The server's sockets: TCP on ``host:port`` (unless ``port`` is None) and the Unix socket at
    ``uds`` (if given), bound before the server starts; closed, and the socket file removed, after."""
    with contextlib.ExitStack() as stack:
        sockets: list[socket.socket] = []
        if port is not None:
            tcp = bind_tcp(host, port)
            stack.callback(tcp.close)
            sockets.append(tcp)
        if uds is not None:
            sockets.append(stack.enter_context(unix_listener(uds)))
        yield sockets


class RequestHeadGuard(HttpToolsProtocol):
    """uvicorn's httptools protocol with the two bounds it lacks on a request head.

    uvicorn (checked in 0.54, httptools and h11 alike) has one timer per connection, the keep-alive
    one: armed when a response is complete and cancelled by any byte received. A connection that
    opens and sends nothing, or sends part of a request head and stalls, is held forever; and
    httptools buffers a head of any size (``h11_max_incomplete_event_size`` is h11's only). So:

    * a connection has ``head_timeout`` seconds to send a complete request head, from when it opens
      or from the first byte that follows a response; past it the connection is closed;
    * a request head past ``max_head_bytes`` (counted as it arrives, so at most one read more is
      buffered) is answered 431 and the connection closed.

    And a request the HTTP parser refuses (a malformed head, both ``Transfer-Encoding`` and
    ``Content-Length``, a bad chunk) is answered 400 in OpenAI's error shape, like every other
    refusal, instead of uvicorn's plain-text one.
    """

    head_timeout: ClassVar[float] = 10.0  # the defaults of ServerSettings (`--http` names this class)
    max_head_bytes: ClassVar[int] = 2 * 32 * 1024
    # FrontDoor's 431 (gateway.api.errors.error_body of HeadersTooLargeError), written here by hand.
    _TOO_LARGE = (
        b'{"error":{"message":"The request headers are too large.","type":"invalid_request_error",'
        b'"param":null,"code":"request_header_fields_too_large"}}'
    )
    _BAD_REQUEST = (
        b'{"error":{"message":"Invalid HTTP request received.","type":"invalid_request_error",'
        b'"param":null,"code":"invalid_request"}}'
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = True  # until a request head is complete; again from a next request's first byte
        self._head_bytes = 0

    @classmethod
    def configured(cls, head_timeout: float, max_head_bytes: int) -> type[RequestHeadGuard]:
        """A subclass with these limits (uvicorn builds the protocol from its class)."""
        return type(cls.__name__, (cls,), {"head_timeout": head_timeout, "max_head_bytes": max_head_bytes})

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)  # parses: may complete a head, start a request, answer 400
        if self.transport.is_closing():
            return
        if self._in_head and self._head_bytes > self.max_head_bytes:
            self._refuse_head()
        elif self._head_timer is None and self.timeout_keep_alive_task is None and not self._serving():
            self._arm_head_timer()  # bytes after a response (uvicorn just cancelled its keep-alive timer)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what its parser refuses (then it returns without more parsing)."""
        self._cancel_head_timer()
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:  # (else: just close)
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (len(self._BAD_REQUEST), self._BAD_REQUEST)
            )
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def _serving(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._serving() and not self.transport.is_closing():
            self.transport.close()  # silently, as uvicorn's keep-alive timeout does

    def _refuse_head(self) -> None:
        self._cancel_head_timer()
        if not self._serving():  # (a pipelined head while a response is being sent: just close)
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(self._TOO_LARGE), self._TOO_LARGE)
            )
        self.transport.close()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, stopped in the steps of :mod:`gateway.drain` on SIGTERM, or on Ctrl-C without
    the grace period (a second signal stops at once)."""

    def __init__(self, config: uvicorn.Config, drain: Drain, grace: float, timeout: float) -> None:
        super().__init__(config)
        self._drain = drain
        self._grace = grace
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._steps: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # (uvicorn would re-raise the signal once stopped, killing the process: we return instead.)
        if self._drain.draining or self._loop is None:
            self.should_exit = self.force_exit = True
            return
        self._drain.begin()
        # SIGTERM comes from an orchestrator whose load balancer must see /ready fail first; Ctrl-C
        # from a person, who has no load balancer to wait for.
        grace = self._grace if sig == signal.SIGTERM else 0.0
        self._loop.call_soon_threadsafe(self._start, grace)

    def _start(self, grace: float) -> None:
        self._steps = asyncio.ensure_future(self._run_steps(grace))

    async def _run_steps(self, grace: float) -> None:
        _log.info("draining: not ready, still serving", grace_s=grace)
        await asyncio.sleep(grace)
        self.should_exit = True  # uvicorn closes the listener and waits for what is in flight
        await asyncio.sleep(self._timeout)
        if self._drain.open_streams:
            _log.warning("drain timed out: ending open streams", streams=self._drain.open_streams)
        self._drain.expire()
