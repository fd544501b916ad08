"""Connection hardening and CORS, end to end: a real gateway process (``offload serve``) in front of the
engine simulator, spoken to over raw loopback sockets where the HTTP client would hide the behaviour.

* Idle keep-alive connections are closed after ``OFFLOAD_SERVER__KEEP_ALIVE_TIMEOUT``.
* A connection that sends no request head, or part of one and stalls, or trickles one byte at a time,
  is closed after ``OFFLOAD_SERVER__HEADER_TIMEOUT`` (uvicorn alone would hold it forever).
* A request head past twice ``OFFLOAD_SERVER__MAX_HEADER_BYTES`` is answered 431 before it ends.
* CORS (``OFFLOAD_SERVER__CORS_ORIGINS``): preflights answered before the API key is checked, allowed
  origins only; nothing of it when no origin is configured.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
import yaml

from gateway.api.errors import error_body
from gateway.errors import HeadersTooLargeError
from gateway.keys import hash_key
from tests.integration.servers import GatewayProcess
from tests.integration.servers import read_until_closed as until_closed
from tests.sim.conftest import RunningSim

KEY = "ofl-hardening-test-key"
APP = "https://app.example"
TIMEOUT = 1  # the keep-alive and header timeouts of the hardened gateway, in seconds
BOUND = 10.0  # the longest any test waits for the gateway to act
TOO_LARGE = "The request headers are too large."
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def models(sim: RunningSim) -> list[dict]:
    return [{"name": "chat", "task": "chat", "engine": {"url": sim.base_url, "served_name": "sim"}}]


@pytest.fixture(scope="module")
def hardened(sim: RunningSim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with an API key, CORS for one origin, and one-second keep-alive and header timeouts."""
    env = {
        "OFFLOAD_SERVER__KEEP_ALIVE_TIMEOUT": str(TIMEOUT),
        "OFFLOAD_SERVER__HEADER_TIMEOUT": str(TIMEOUT),
        "OFFLOAD_SERVER__CORS_ORIGINS": orjson.dumps([APP]).decode(),
    }
    gw = GatewayProcess(tmp_path_factory.mktemp("hardened"), models(sim), env)
    auth = {"keys": [{"name": "page", "hash": hash_key(KEY)}]}
    gw.config_path.write_text(yaml.safe_dump({"models": models(sim), "auth": auth}))
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def plain(sim: RunningSim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with the default settings: no CORS origin configured."""
    gw = GatewayProcess(tmp_path_factory.mktemp("plain"), models(sim)).start()
    yield gw
    gw.stop()


def connect(gw: GatewayProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=BOUND)


def read_until_closed(sock: socket.socket, within: float = BOUND) -> tuple[bytes, float]:
    """Everything received until the gateway closed the connection, and the seconds that took."""
    return until_closed(sock, within)


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body, read from a connection left open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed before the response body ended"
        body += chunk
    return head


# Connections ------------------------------------------------------------------------------------


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(
    hardened: GatewayProcess,
) -> None:
    with connect(hardened) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        rest, took = read_until_closed(sock)

    assert rest == b"", "the gateway sent more than the one response"
    assert TIMEOUT * 0.8 <= took <= TIMEOUT + 3, f"closed after {took:.2f} s, keep-alive timeout {TIMEOUT} s"


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(hardened: GatewayProcess) -> None:
    with connect(hardened) as sock:
        received, took = read_until_closed(sock)

    assert received == b""
    assert TIMEOUT * 0.8 <= took <= TIMEOUT + 3, f"closed after {took:.2f} s, header timeout {TIMEOUT} s"


def test_a_partial_request_head_that_stalls_is_closed_after_the_header_timeout(
    hardened: GatewayProcess,
) -> None:
    with connect(hardened) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer ")
        received, took = read_until_closed(sock)

    assert received == b"", "a request that never finished its head got an answer"
    assert took <= TIMEOUT + 3, f"closed after {took:.2f} s, header timeout {TIMEOUT} s"


def test_a_partial_next_request_after_a_response_is_closed_after_the_header_timeout(
    hardened: GatewayProcess,
) -> None:
    # uvicorn cancels its keep-alive timer on any byte received: without the header timeout this
    # connection would be held open for good.
    with connect(hardened) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: gat")
        received, took = read_until_closed(sock)

    assert received == b""
    assert took <= TIMEOUT + 3, f"closed after {took:.2f} s, header timeout {TIMEOUT} s"


def test_a_request_head_trickled_a_byte_at_a_time_is_closed_after_the_header_timeout(
    hardened: GatewayProcess,
) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: gateway\r\nX-Slow: " + b"a" * 10_000
    start = time.monotonic()
    closed = False
    with connect(hardened) as sock:
        for byte in head:  # one byte, then up to 0.1 s for the gateway to close the connection
            if time.monotonic() - start > BOUND:
                break
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sock.settimeout(0.1)
            try:
                if sock.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except ConnectionResetError:
                closed = True
                break
    took = time.monotonic() - start

    assert closed, f"still open after {took:.1f} s of trickled headers"
    assert took <= TIMEOUT + 3, f"closed after {took:.2f} s, header timeout {TIMEOUT} s"


def test_a_request_head_far_past_the_header_limit_is_answered_431_before_it_ends(
    hardened: GatewayProcess,
) -> None:
    with connect(hardened) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: gateway\r\n")
        line = b"X-Big: " + b"a" * 1000 + b"\r\n"
        try:
            for _ in range(100):  # 100 KB of headers and no end to them; the limit is 2 x 32 KiB
                sock.sendall(line)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while sending: the answer is already waiting to be read
        received, _ = read_until_closed(sock)

    assert received.startswith(b"HTTP/1.1 431 "), received[:200]
    # the very answer the gateway gives when the parsed headers are too large
    assert received.partition(b"\r\n\r\n")[2] == error_body(HeadersTooLargeError(TOO_LARGE))[0]


def test_headers_past_the_limit_but_within_the_raw_bound_get_the_gateways_own_431(
    hardened: GatewayProcess,
) -> None:
    response = httpx.get(hardened.base_url + "/v1/models", headers={"X-Big": "a" * 40_000})

    assert response.status_code == 431
    assert response.json()["error"]["code"] == "request_header_fields_too_large"


def test_requests_on_a_kept_alive_connection_still_work(hardened: GatewayProcess) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=hardened.base_url, headers=headers, timeout=BOUND) as client:
        for _ in range(3):
            response = client.post("/v1/chat/completions", json=CHAT)
            assert response.status_code == 200, response.text


# CORS -------------------------------------------------------------------------------------------


def preflight(gw: GatewayProcess, origin: str) -> httpx.Response:
    return httpx.options(
        gw.base_url + "/v1/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os, openai-project",
        },
        timeout=BOUND,
    )


def test_a_preflight_from_an_allowed_origin_is_answered_before_the_key_is_checked(
    hardened: GatewayProcess,
) -> None:
    response = preflight(hardened, APP)

    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == APP
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-stainless-os", "openai-project"} <= allowed
    assert "access-control-allow-credentials" not in response.headers


def test_a_preflight_from_another_origin_is_not_allowed(hardened: GatewayProcess) -> None:
    response = preflight(hardened, "https://evil.example")

    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


def test_a_request_from_an_allowed_origin_gets_the_cors_headers(hardened: GatewayProcess) -> None:
    response = httpx.post(
        hardened.base_url + "/v1/chat/completions",
        json=CHAT,
        headers={"Origin": APP, "Authorization": f"Bearer {KEY}"},
        timeout=BOUND,
    )

    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == APP
    assert "Origin" in response.headers["vary"]
    exposed = {h.strip() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "x-offload-model", "retry-after", "x-ratelimit-remaining-requests"} <= exposed
    assert "access-control-allow-credentials" not in response.headers


def test_an_error_to_an_allowed_origin_is_readable_by_the_page(hardened: GatewayProcess) -> None:
    response = httpx.post(hardened.base_url + "/v1/chat/completions", json=CHAT, headers={"Origin": APP})

    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == APP


def test_a_request_from_another_origin_gets_no_allow_origin(hardened: GatewayProcess) -> None:
    response = httpx.get(hardened.base_url + "/health", headers={"Origin": "https://evil.example"})

    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_with_no_origin_configured_there_are_no_cors_headers(plain: GatewayProcess) -> None:
    answered = preflight(plain, APP)
    simple = httpx.post(plain.base_url + "/v1/chat/completions", json=CHAT, headers={"Origin": APP})

    assert simple.status_code == 200, simple.text
    assert answered.status_code == 405  # no CORS: an OPTIONS like any other, which the route refuses
    for response in (answered, simple):
        assert not [h for h in response.headers if h.lower().startswith("access-control-")], response.headers
