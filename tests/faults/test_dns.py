"""DNS: a model served by ``engine: {dns: NAME:PORT}`` (a Kubernetes headless service, say) whose
name resolves to a new address, or stops resolving and comes back. The gateway re-resolves every
``OFFLOAD_HEALTH__DNS_INTERVAL`` (0.5 s here) and its replicas must follow within a few periods.

The name is real to the resolver: an entry of this test's own in ``/etc/hosts`` (glibc reads the
file on every lookup), changed by the test and removed in the end, whatever happens. Two
simulators listen on the same port of two loopback addresses, 127.0.0.2 and 127.0.0.3, as two pods
behind one service would.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from engines.sim import Knobs, SimConfig
from tests.faults.conftest import Cell
from tests.faults.harness import Sim, in_flight, post, serve_sim, start_gateway, stream
from tests.integration.servers import GatewayProcess, eventually, wait_until

GROUP = "dns"
HOSTS = Path("/etc/hosts")
NAME = f"offload-faults-{os.getpid()}.test"
OURS = re.compile(r"\boffload-faults-(\d+)\.test$")
DNS_INTERVAL = 0.5
FOLLOW_LIMIT_S = 5.0  # a few re-resolve periods, plus a probe of the new replica, with room to spare
MESSAGES = [{"role": "user", "content": "hi"}]


SHIM = Path(__file__).parent / "resolver"  # its sitecustomize fails lookups on demand


def _writable_hosts() -> bool:
    try:
        return os.access(HOSTS, os.W_OK) and HOSTS.is_file()
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _writable_hosts(), reason="/etc/hosts is not writable here (needs root)")


def _ours(line: str) -> bool:
    """A line of this test's: its own name, or one a killed run of it left behind."""
    match = OURS.search(line)
    return match is not None and (match.group(0) == NAME or not Path(f"/proc/{match.group(1)}").exists())


def point(addresses: list[str]) -> None:
    """Make ``NAME`` resolve to ``addresses`` (none: not at all), leaving every other line as it was.

    Written in place (the file may be a bind mount) and without truncating it first: our lines come
    last, so a lookup by anyone else meanwhile still finds every other line where it was."""
    lines = [line for line in HOSTS.read_text().splitlines() if not _ours(line)]
    lines += [f"{address} {NAME}" for address in addresses]
    with HOSTS.open("r+") as f:
        f.write("\n".join(lines) + "\n")
        f.truncate()


def resolves() -> list[str]:
    try:
        return sorted({str(i[4][0]) for i in socket.getaddrinfo(NAME, 80, type=socket.SOCK_STREAM)})
    except socket.gaierror:
        return []


@dataclass
class Pods:
    gw: GatewayProcess
    a: Sim
    b: Sim
    failing: Path
    """Names listed here fail to resolve in the gateway, as with a DNS server down (EAI_AGAIN)."""


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pods]:
    probe = socket.socket()
    probe.bind(("127.0.0.2", 0))
    port = probe.getsockname()[1]
    probe.close()
    config = SimConfig(model="sim", knobs=Knobs(output_tokens=8))
    try:
        point(["127.0.0.2"])
        with serve_sim(config, "127.0.0.2", port) as a, serve_sim(config, "127.0.0.3", port) as b:
            models = [
                {"name": "chat", "task": "chat", "engine": {"dns": f"{NAME}:{port}", "served_name": "sim"}}
            ]
            work = tmp_path_factory.mktemp("dns")
            failing = work / "failing-names"
            failing.write_text("")
            env = {
                "OFFLOAD_HEALTH__DNS_INTERVAL": str(DNS_INTERVAL),
                "OFFLOAD_HEALTH__PROBE_INTERVAL": "0.3",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(SHIM), os.environ.get("PYTHONPATH")])),
                "OFFLOAD_FAULTS_RESOLVER": str(failing),
            }
            gw = start_gateway(work, models, env)
            try:
                yield Pods(gw, a, b, failing)
            finally:
                gw.stop()
    finally:
        point([])
    assert NAME not in HOSTS.read_text()


def served_by(pods: Pods) -> str:
    """Which pod answered one request: ``a``, ``b``, or the status when neither did."""
    before = (pods.a.snapshot(), pods.b.snapshot())
    reply = post(pods.gw, {"model": "chat", "messages": MESSAGES}, timeout=10)
    if reply.status != 200:
        return str(reply.status)
    if pods.a.snapshot() != before[0]:
        return "a"
    assert pods.b.snapshot() != before[1]
    return "b"


def follow(pods: Pods, until: Callable[[str], bool]) -> tuple[float, list[str]]:
    """Send requests one after another until one is served as ``until`` says; seconds taken and
    what the requests before it got."""
    seen: list[str] = []
    started = time.monotonic()
    while time.monotonic() - started < FOLLOW_LIMIT_S * 3:
        who = served_by(pods)
        if until(who):
            return time.monotonic() - started, seen
        seen.append(who)
        time.sleep(0.02)
    raise AssertionError(f"the replicas did not follow DNS; requests got {seen[-10:]}")


def test_a_name_that_resolves_to_a_new_address(pods: Pods, cell: Cell) -> None:
    cell.cell = "resolves_to_a_new_address"
    point(["127.0.0.2"])
    follow(pods, lambda who: who == "a")
    # A stream under way on the old pod when the name moves: it finishes there.
    with httpx.Client(base_url=pods.gw.base_url, timeout=20) as client:
        body = {
            "model": "chat",
            "messages": MESSAGES,
            "stream": True,
            "sim": {"itl": 0.1, "output_tokens": 20},
        }
        with client.stream("POST", "/v1/chat/completions", json=body) as under_way:
            wait_until(lambda: pods.a.running == 1, 5, interval=0.01, what="the stream to start on a")
            point(["127.0.0.3"])
            assert resolves() == ["127.0.0.3"]
            took, before = follow(pods, lambda who: who == "b")
            text = under_way.read()
    cell.saw(
        f"new requests on the new address {took:.2f} s after the change (before that: {len(before)} "
        "served by the old one, no error); a stream under way on the old address finished there",
        recover_s=took,
    )
    assert set(before) <= {"a"}, before  # never an error while moving
    assert took < FOLLOW_LIMIT_S
    assert text.endswith(b"data: [DONE]\n\n") and b'"error"' not in text
    assert {served_by(pods) for _ in range(5)} == {"b"}  # the old address is gone from the table
    eventually(lambda: _idle(pods))


def test_a_name_that_stops_resolving_and_comes_back(pods: Pods, cell: Cell) -> None:
    cell.cell = "stops_resolving_then_back"
    point(["127.0.0.3"])
    follow(pods, lambda who: who == "b")
    point([])
    assert resolves() == []
    gone, before = follow(pods, lambda who: who not in ("a", "b"))
    status = served_by(pods)
    ready = httpx.get(pods.gw.base_url + "/ready", timeout=5).status_code
    answer = stream(pods.gw, {"model": "chat", "messages": MESSAGES})
    point(["127.0.0.2"])
    back, meanwhile = follow(pods, lambda who: who == "a")
    cell.saw(
        f"{status} (no replica; /ready {ready}, streams {answer.status}) {gone:.2f} s after the name "
        f"stopped resolving; served again {back:.2f} s after it resolved again",
        recover_s=back,
    )
    assert set(before) <= {"b"}
    assert status == "503" and ready == 503 and answer.status == 503
    assert gone < FOLLOW_LIMIT_S and back < FOLLOW_LIMIT_S
    assert set(meanwhile) <= {"503"}
    eventually(lambda: _idle(pods))


def test_a_resolver_that_cannot_answer_for_a_while_keeps_the_replicas(pods: Pods, cell: Cell) -> None:
    """Regression: every failed lookup counted as "no address", so a DNS server down or timing out
    for a few seconds (a CoreDNS restart) took every DNS-discovered model out (503) while its
    engines were fine. A name that does not exist still empties the replicas (the cell above)."""
    cell.cell = "resolver_cannot_answer"
    point(["127.0.0.2"])
    follow(pods, lambda who: who == "a")
    pods.failing.write_text(NAME + "\n")
    outage = time.monotonic()
    seen = []
    try:
        while time.monotonic() - outage < DNS_INTERVAL * 5:  # five re-resolve periods
            seen.append(served_by(pods))
            time.sleep(0.02)
    finally:
        pods.failing.write_text("")
    point(["127.0.0.3"])
    back, _ = follow(pods, lambda who: who == "b")
    errors = len([who for who in seen if who not in ("a", "b")])
    cell.saw(
        f"{len(seen) - errors}/{len(seen)} served by the last known address during "
        f"{DNS_INTERVAL * 5:.1f} s of failed lookups (EAI_AGAIN); followed a real change "
        f"{back:.2f} s after the resolver answered again",
        recover_s=back,
    )
    assert errors == 0, seen
    assert back < FOLLOW_LIMIT_S
    eventually(lambda: _idle(pods))


def _idle(pods: Pods) -> None:
    assert (pods.a.running, pods.b.running) == (0, 0)
    assert in_flight(pods.gw, "chat") == 0
