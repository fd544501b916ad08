"""Several workers on one port (gateway/workers.py), end to end: real gateway processes in front of the
engine simulator. Both workers answer; /metrics gives the totals whichever answers; a reload (SIGHUP)
and a drain (SIGTERM) reach both; a killed worker is replaced; gRPC is served by both."""

from __future__ import annotations

import json
import re
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from engines.sim import Knobs, SimConfig
from tests.integration.servers import GatewayProcess, wait_until
from tests.sim.conftest import RunningSim
from tests.sim.test_drain import Streams


def start_gateway(tmp_path: Path, sim: RunningSim, env: dict[str, str] | None = None) -> GatewayProcess:
    models = [{"name": "chat", "task": "chat", "engine": {"url": sim.base_url, "served_name": "sim"}}]
    return GatewayProcess(tmp_path, models, {"OFFLOAD_SERVER__WORKERS": "2", **(env or {})}).start()


def workers(gw: GatewayProcess) -> list[psutil.Process]:
    assert gw.proc is not None
    return psutil.Process(gw.proc.pid).children()


def counter(text: str, name: str) -> float:
    """The sum of a series' samples in a Prometheus text (0 when absent)."""
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def fresh(url: str) -> str:
    """GET on a new connection (a new source port: the kernel may pick the other worker)."""
    with httpx.Client(timeout=10) as client:
        response = client.get(url)
        response.raise_for_status()
        return response.text


def chat(base_url: str) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    with httpx.Client(timeout=10) as client:
        assert client.post(base_url + "/v1/chat/completions", json=body).status_code == 200


def private_sockets(gw: GatewayProcess) -> list[Path]:
    """The workers' private sockets (in the folder the pool made for them)."""
    slot = json.loads(workers(gw)[0].environ()["OFFLOAD_INTERNAL_WORKER"])
    return sorted(Path(slot["peers"][0]).parent.glob("worker-*.sock"))


def own_metrics(sock: Path) -> str:
    """One worker's own figures, asked on its private socket."""
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=10) as client:
        return client.get("http://worker/metrics?scope=worker").text


@pytest.fixture
def sim(start_sim: Callable[[SimConfig], RunningSim]) -> RunningSim:
    return start_sim(SimConfig(model="sim", knobs=Knobs(itl=0.0, output_tokens=3)))


def test_two_workers_answer_on_one_port_and_metrics_are_the_totals_of_both(
    sim: RunningSim, tmp_path: Path
) -> None:
    gw = start_gateway(tmp_path, sim)
    try:
        assert len(workers(gw)) == 2
        for _ in range(40):
            chat(gw.base_url)
        totals = fresh(gw.base_url + "/metrics")
        assert counter(totals, "offload_requests_total") == 40
        assert counter(totals, "offload_workers_reporting") == 2
        assert counter(totals, "offload_completion_tokens_total") == 40 * 3
        # The kernel spread the 40 connections over both workers; each counts its own share.
        shares = [counter(own_metrics(sock), "offload_requests_total") for sock in private_sockets(gw)]
        assert len(shares) == 2 and sum(shares) == 40 and min(shares) > 0, shares
        # The totals do not depend on which worker answers.
        assert {counter(fresh(gw.base_url + "/metrics"), "offload_requests_total") for _ in range(10)} == {40}
    finally:
        gw.stop()


def test_a_killed_worker_is_replaced_and_the_port_keeps_answering(sim: RunningSim, tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, sim)
    try:
        before = {p.pid for p in workers(gw)}
        victim = psutil.Process(min(before))
        victim.kill()
        victim.wait(10)
        wait_until(
            lambda: len(workers(gw)) == 2 and {p.pid for p in workers(gw)} != before, 30, what="a new worker"
        )
        replaced = {p.pid for p in workers(gw)} - before
        assert len(replaced) == 1
        assert "worker exited; replacing it" in gw.log()
        # Every connection is answered meanwhile and after (the pool kept the dead worker's socket).
        for _ in range(20):
            chat(gw.base_url)
        wait_until(
            lambda: counter(fresh(gw.base_url + "/metrics"), "offload_workers_reporting") == 2,
            30,
            what="both workers reporting",
        )
    finally:
        gw.stop()


def test_sighup_reloads_every_worker(sim: RunningSim, tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, sim, {"OFFLOAD_RELOAD__WATCH_INTERVAL": "0"})  # SIGHUP only
    try:
        config = yaml.safe_load(gw.config_path.read_text())
        config["models"].append({**config["models"][0], "name": "chat-2"})
        gw.config_path.write_text(yaml.safe_dump(config))
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)

        def every_worker_has_it() -> bool:
            # 20 fresh connections: the chance that one worker is never asked is 2 in a million
            return all("chat-2" in fresh(gw.base_url + "/v1/models") for _ in range(20))

        wait_until(every_worker_has_it, 30, what="chat-2 listed by both workers")
        # (each worker logs it just after the new table is in use)
        wait_until(lambda: gw.log().count("configuration reloaded") == 2, 10, what="two reloads logged")
    finally:
        gw.stop()


def test_sigterm_drains_every_worker_with_its_open_streams(
    start_sim: Callable[[SimConfig], RunningSim], tmp_path: Path
) -> None:
    sim = start_sim(SimConfig(model="sim", knobs=Knobs(itl=0.05, output_tokens=40)))  # 2 s streams
    gw = start_gateway(tmp_path, sim, {"OFFLOAD_SERVER__DRAIN_TIMEOUT": "20"})
    streams = Streams(gw.base_url, 12)
    streams.wait_started(10)
    in_flight = [counter(own_metrics(sock), "offload_requests_in_flight") for sock in private_sockets(gw)]
    assert len(in_flight) == 2 and sum(in_flight) == 12 and min(in_flight) > 0, in_flight  # both hold streams
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGTERM)
    streams.join(30)
    assert gw.proc.wait(30) == 0
    assert not streams.errors
    for payloads in streams.payloads:
        assert payloads[-1] == "[DONE]"
        assert '"finish_reason":"stop"' in payloads[-2].replace(" ", "")
    assert gw.log().count("draining: not ready, still serving") == 2
    with pytest.raises(httpx.ConnectError):
        httpx.get(gw.base_url + "/health", timeout=2)


def test_grpc_is_served_by_every_worker(sim: RunningSim, tmp_path: Path) -> None:
    from tests.integration.servers import free_port

    port = free_port()
    gw = start_gateway(tmp_path, sim, {"OFFLOAD_SERVER__GRPC_PORT": str(port)})
    try:
        wait_until(lambda: gw.log().count("gRPC door open") == 2, 30, what="two gRPC doors")
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        assert "worker exited" not in gw.log()
    finally:
        gw.stop()
