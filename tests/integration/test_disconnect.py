"""A client that leaves must stop the engine's work at once (vLLM aborts when the connection closes)."""

from __future__ import annotations

import socket
import time

import httpx
import orjson

from tests.integration.conftest import CHAT, Engines
from tests.integration.servers import GatewayProcess, engine_gauge, engine_idle_after, wait_until

RUNNING = "vllm:num_requests_running"
# ignore_eos + 2000 tokens at ~17 tokens/s: about two minutes of work if nobody aborts it.
LONG = {
    "model": CHAT,
    "messages": [{"role": "user", "content": "Tell me a story."}],
    "max_tokens": 2000,
    "ignore_eos": True,
}


def _wait_idle(engines: Engines) -> None:
    wait_until(lambda: engine_gauge(engines.url(CHAT), RUNNING) == 0, 30, what="engine idle")


def test_stream_disconnect_aborts_engine_request_within_a_second(
    gateway: GatewayProcess, engines: Engines
) -> None:
    _wait_idle(engines)
    with httpx.stream(
        "POST", gateway.base_url + "/v1/chat/completions", json={**LONG, "stream": True}, timeout=60
    ) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # keep the iterator: dropping it would close the connection early
        chunks = 0
        while chunks < 5:
            chunks += next(lines).startswith("data: ")
        # The engine shows the request as running (it would for minutes: 2000 tokens, ignore_eos).
        wait_until(
            lambda: engine_gauge(engines.url(CHAT), RUNNING) == 1, 10, interval=0.05, what="engine busy"
        )
        r.close()
    left = time.monotonic()
    aborted = engine_idle_after(engines.url(CHAT), left)
    assert aborted <= 1.0, f"engine still running {aborted:.2f} s after the client left"


def test_non_streaming_disconnect_aborts_engine_request_within_a_second(
    gateway: GatewayProcess, engines: Engines
) -> None:
    _wait_idle(engines)
    body = orjson.dumps(LONG)
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + b"X-Request-Id: leaves-early\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    # Generating (its disconnect watcher started before the engine call): the client leaves now.
    wait_until(lambda: engine_gauge(engines.url(CHAT), RUNNING) == 1, 10, interval=0.05, what="engine busy")
    sock.close()
    left = time.monotonic()
    aborted = engine_idle_after(engines.url(CHAT), left)
    assert aborted <= 1.0, f"engine still running {aborted:.2f} s after the client left"
    # The gateway logged the request as a client disconnect (499), not as an error of its own.
    assert gateway.summary("leaves-early")["status"] == 499
