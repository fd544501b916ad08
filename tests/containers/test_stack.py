"""deploy/compose.yaml's cpu profile run by podman-compose: the gateway container in front of one engine
container per model version, reached through the official OpenAI SDK. An engine container dies: 503
with Retry-After for its model only, then its restart policy brings it back with no manual step. The
gateway container sent SIGTERM with a stream open: the stream still ends cleanly.

The tests run in file order against one stack (module fixture `stack`); the destructive ones come last."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
import yaml

from gateway.config import parse_config
from tests.containers.conftest import (
    COMPOSE,
    ENGINE_SERVICES,
    GATEWAY_SERVICE,
    Stack,
    podman,
)
from tests.integration.servers import wait_until

pytestmark = pytest.mark.engines

# An engine container restarting: vLLM's start on 2 cores (~45-70 s eager), bounded well above.
RECOVER_TIMEOUT = 300.0


def test_stack_starts_and_models_lists_what_the_compose_file_declares(
    stack: Stack, record_property: pytest.RecordProperty
) -> None:
    record_property("stack_start_seconds", round(stack.start_seconds, 1))
    gateway = yaml.safe_load(COMPOSE.read_text())["services"][GATEWAY_SERVICE]
    (mount,) = [v for v in gateway["volumes"] if v.endswith(":/etc/offload/offload.yaml:ro")]
    config_path = COMPOSE.parent / mount.split(":")[0]
    config = parse_config(config_path.read_text(), str(config_path))

    listed = {m.id for m in stack.client().models.list()}

    assert {m.name for m in config.models} <= listed
    for model in config.models:  # every version and alias the file declares, as name:version
        for version in model.version_configs():
            assert f"{model.name}:{version}" in listed or len(model.version_configs()) == 1


def test_every_containers_healthcheck_passes(stack: Stack) -> None:
    # Podman schedules HEALTHCHECKs with systemd timers, which these machines lack: run each one here.
    for service in (GATEWAY_SERVICE, *ENGINE_SERVICES.values()):
        check = podman("healthcheck", "run", stack.container(service), check=False)
        assert check.returncode == 0, (service, check.stdout, check.stderr)


def test_sdk_chats_through_the_gateway_container(stack: Stack) -> None:
    reply = stack.client().chat.completions.create(
        model="chat:v1",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
    )

    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_sdk_streams_through_the_gateway_container(stack: Stack) -> None:
    stream = stack.client().chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "Count from one to ten."}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert text.strip()
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None


def test_sdk_embeds_through_the_gateway_container(stack: Stack) -> None:
    result = stack.client().embeddings.create(model="embeddings", input=["hello world", "bonjour"])

    assert [len(d.embedding) for d in result.data] == [384, 384]
    assert result.data[0].embedding[:2] == pytest.approx([-0.0345, 0.0311], abs=2e-3)


def test_engine_containers_get_the_compose_files_cpu_and_memory_limits(
    stack: Stack, record_property: pytest.RecordProperty
) -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for service in ENGINE_SERVICES.values():
        limits = services[service]["deploy"]["resources"]["limits"]
        host = stack.inspect(service)["HostConfig"]
        assert isinstance(host, dict)
        # what Podman was asked for: the compose file's limits
        assert host["NanoCpus"] == int(float(limits["cpus"]) * 1e9), service
        assert host["Memory"] == int(limits["memory"].rstrip("g")) * 2**30, service
        # what the kernel enforces inside the container (cgroup v1 here, v2 elsewhere)
        enforced = podman(
            "exec",
            stack.container(service),
            "sh",
            "-c",
            "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
        ).stdout.strip()
        record_property(f"{service}_memory_limit_enforced", enforced)
        assert enforced == str(host["Memory"]), service
        # CPU: a CFS quota per period (cgroup v2: "QUOTA PERIOD" in cpu.max)
        quota = podman(
            "exec",
            stack.container(service),
            "sh",
            "-c",
            "cat /sys/fs/cgroup/cpu.max 2>/dev/null"
            " || echo $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)",
        ).stdout.split()
        record_property(f"{service}_cpu_quota_enforced", " ".join(quota))
        assert int(quota[0]) / int(quota[1]) == pytest.approx(float(limits["cpus"])), (service, quota)


def embeddings_status(stack: Stack) -> tuple[int, str | None]:
    """Status and Retry-After of one embeddings request through the gateway."""
    answer = httpx.post(
        stack.base_url + "/v1/embeddings",
        headers={"Authorization": "Bearer " + stack.client().api_key},
        json={"model": "embeddings", "input": "ping"},
        timeout=30,
    )
    return answer.status_code, answer.headers.get("retry-after")


def test_dead_engine_container_gives_503_for_its_model_only_then_restarts_by_itself(
    stack: Stack, record_property: pytest.RecordProperty
) -> None:
    service = ENGINE_SERVICES["embeddings"]
    restarts_before = int(str(stack.inspect(service)["RestartCount"]))
    client = stack.client()
    killed = time.monotonic()

    # The engine dies (as in a crash or an OOM kill): SIGKILL to the container's main process, vLLM's API
    # server; its PID namespace goes with it (EngineCore, Worker). Not `podman kill`: Podman 4.3 counts
    # that as a stop by the user, after which no restart policy restarts the container.
    os.kill(int(str(stack.inspect(service)["State"]["Pid"])), signal.SIGKILL)  # type: ignore[index]

    wait_until(lambda: embeddings_status(stack)[0] == 503, 60, what="503 for the killed engine's model")
    status, retry_after = embeddings_status(stack)
    assert status == 503 and retry_after, (status, retry_after)
    # the other model keeps answering meanwhile
    reply = client.chat.completions.create(
        model="chat:v1", messages=[{"role": "user", "content": "Say hi."}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None
    # the restart policy (unless-stopped) restarts the container; vLLM loads; the gateway sees it healthy
    wait_until(
        lambda: embeddings_status(stack)[0] == 200, RECOVER_TIMEOUT, interval=2, what="the engine back"
    )
    recovered = time.monotonic() - killed
    record_property("kill_and_recover_seconds", round(recovered, 1))

    assert int(str(stack.inspect(service)["RestartCount"])) > restarts_before
    assert len(client.embeddings.create(model="embeddings", input="back").data[0].embedding) == 384


def test_sigterm_to_the_gateway_container_lets_an_open_stream_end_cleanly(stack: Stack) -> None:
    restarts_before = int(str(stack.inspect(GATEWAY_SERVICE)["RestartCount"]))
    stream = stack.client(timeout=120).chat.completions.create(
        model="chat:v1",
        messages=[{"role": "user", "content": "Tell me a long story."}],
        max_tokens=120,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    finish: list[str | None] = []
    received = 0
    for chunk in stream:
        received += 1
        if received == 3:
            podman("kill", "--signal", "TERM", stack.container(GATEWAY_SERVICE))
        finish.extend(c.finish_reason for c in chunk.choices)

    assert received > 3
    assert finish[-1] == "length"  # every token asked for arrived: the drain let the stream finish
    # and the gateway process did exit (then its restart policy may start it again)
    wait_until(lambda: gateway_exited(stack, restarts_before), 60, what="the gateway to exit after its drain")


def gateway_exited(stack: Stack, restarts_before: int) -> bool:
    info = stack.inspect(GATEWAY_SERVICE)
    state = info["State"]
    assert isinstance(state, dict)
    if state["Status"] == "exited":
        assert state["ExitCode"] == 0, state  # a clean exit after the drain, not a kill
        return True
    return int(str(info["RestartCount"])) > restarts_before
