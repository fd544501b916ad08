"""Graceful drain, end to end: a real gateway process in front of the engine simulator gets SIGTERM
with streams open. Not ready at once, still serving through the grace period, then closed to new
connections; streams that can finish do, the ones that cannot end with an in-band error and
``[DONE]``; the process exits 0."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson

from engines.sim import Knobs, SimConfig
from tests.integration.servers import GatewayProcess, wait_until
from tests.sim.conftest import RunningSim


class Streams:
    """Chat streams read to their end in threads, with every payload kept."""

    def __init__(self, base_url: str, count: int) -> None:
        self.payloads: list[list[str]] = [[] for _ in range(count)]
        self.errors: list[BaseException] = []
        self.started = threading.Semaphore(0)
        self._threads = [threading.Thread(target=self._read, args=(base_url, i)) for i in range(count)]
        for thread in self._threads:
            thread.start()

    def _read(self, base_url: str, i: int) -> None:
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        try:
            with httpx.stream("POST", base_url + "/v1/chat/completions", json=body, timeout=60) as response:
                first = True
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.payloads[i].append(line.removeprefix("data: "))
                        if first:
                            first = False
                            self.started.release()
        except BaseException as exc:
            self.errors.append(exc)
            self.started.release()

    def wait_started(self, timeout: float) -> None:
        for _ in self._threads:
            assert self.started.acquire(timeout=timeout), "a stream did not start"

    def join(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout)
            assert not thread.is_alive(), "a stream did not end"


def gateway(tmp_path: Path, sim: RunningSim, grace: float, timeout: float) -> GatewayProcess:
    models = [{"name": "chat", "task": "chat", "engine": {"url": sim.base_url, "served_name": "sim"}}]
    env = {"OFFLOAD_SERVER__DRAIN_GRACE": str(grace), "OFFLOAD_SERVER__DRAIN_TIMEOUT": str(timeout)}
    return GatewayProcess(tmp_path, models, env).start()


def refuses_connections(url: str) -> bool:
    try:
        httpx.get(url + "/health", timeout=1)
    except httpx.ConnectError:
        return True
    return False


def test_sigterm_lets_open_streams_finish_and_closes_to_new_connections_after_the_grace(
    start_sim: Callable[[SimConfig], RunningSim], tmp_path: Path
) -> None:
    sim = start_sim(SimConfig(model="sim", knobs=Knobs(itl=0.05, output_tokens=60)))  # 3 s streams
    gw = gateway(tmp_path, sim, grace=1.5, timeout=20)
    streams = Streams(gw.base_url, 20)
    streams.wait_started(10)
    assert gw.proc is not None

    gw.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    wait_until(
        lambda: httpx.get(gw.base_url + "/ready").status_code == 503, 1, interval=0.02, what="not ready"
    )
    during_grace = httpx.post(
        gw.base_url + "/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": "hi"}], "sim": {"output_tokens": 2}},
        timeout=10,
    )
    wait_until(lambda: refuses_connections(gw.base_url), 5, interval=0.05, what="listener closed")
    closed_after = time.monotonic() - sent
    streams.join(30)
    code = gw.proc.wait(timeout=30)

    assert during_grace.status_code == 200
    assert closed_after >= 1.4
    assert streams.errors == []
    for payloads in streams.payloads:
        assert payloads[-1] == "[DONE]"
        assert not any('"error"' in p for p in payloads)
        assert sum(1 for p in payloads[:-1] if orjson.loads(p)["choices"]) >= 60
    assert code == 0


def test_streams_still_open_at_the_drain_timeout_end_with_an_error_and_done(
    start_sim: Callable[[SimConfig], RunningSim], tmp_path: Path
) -> None:
    sim = start_sim(SimConfig(model="sim", knobs=Knobs(itl=0.1, output_tokens=600)))  # 60 s streams
    gw = gateway(tmp_path, sim, grace=0.2, timeout=1.5)
    streams = Streams(gw.base_url, 8)
    streams.wait_started(10)
    assert gw.proc is not None

    gw.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    streams.join(20)
    ended_after = time.monotonic() - sent
    code = gw.proc.wait(timeout=20)

    assert streams.errors == [] and ended_after < 10
    for payloads in streams.payloads:
        assert payloads[-1] == "[DONE]"
        error = orjson.loads(payloads[-2])["error"]
        assert "shutting down" in error["message"] and error["code"] == "engine_unavailable"
    assert code == 0
    wait_until(lambda: sim.metric("vllm:num_requests_running") == 0, 5, what="engine requests aborted")
