"""The gRPC door end to end against the engine simulator: a real gateway process with
``OFFLOAD_SERVER__GRPC_PORT`` set, the generated stub as the client. Keys, limits, routing, version
pinning, errors as statuses, metrics, health, reflection, and a cancelled call aborting the engine."""

from __future__ import annotations

import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from engines.sim import Knobs, SimConfig
from gateway.keys import hash_key
from gateway.rpc.generated import offload_pb2 as pb
from gateway.rpc.generated import offload_pb2_grpc as pb_grpc
from tests.integration.servers import GatewayProcess, free_port, wait_until
from tests.sim.conftest import RunningSim

KEY, LIMITED = "ofl-grpc-test-key", "ofl-grpc-limited-key"


def hi(model: str = "chat", **fields: object) -> pb.ChatRequest:
    return pb.ChatRequest(model=model, messages=[pb.ChatMessage(role="user", content="hi")], **fields)


class Door:
    """A gateway process with its gRPC door open, and a client channel to it."""

    def __init__(
        self, tmp: Path, models: list[dict], extra: dict | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.grpc_port = free_port()
        self.gw = GatewayProcess(
            tmp, models, {"OFFLOAD_SERVER__GRPC_PORT": str(self.grpc_port), **(env or {})}
        )
        if extra:
            self.gw.config_path.write_text(yaml.safe_dump({"models": models, **extra}))
        self.gw.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        grpc.channel_ready_future(self.channel).result(timeout=10)
        self.stub = pb_grpc.OffloadStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.gw.stop()


def _models(sim: RunningSim) -> list[dict]:
    engine = {"url": sim.base_url, "served_name": "sim"}
    return [
        {
            "name": "chat",
            "task": "chat",
            "versions": {
                "v1": {"weight": 100, "engines": [engine]},
                "v2": {"weight": 0, "engines": [engine]},
            },
            "aliases": {"stable": "v1"},
        },
        {"name": "emb", "task": "embeddings", "engine": engine},
    ]


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Door, RunningSim]]:
    from tests.sim.conftest import serve_sim

    with serve_sim(SimConfig(model="sim", embedding_dims=32, knobs=Knobs(output_tokens=8))) as sim:
        opened = Door(tmp_path_factory.mktemp("grpc"), _models(sim))
        try:
            yield opened, sim
        finally:
            opened.close()


def test_chat_streams_one_message_per_chunk_with_the_openai_fields(door: tuple[Door, RunningSim]) -> None:
    stub = door[0].stub
    chunks = list(stub.Chat(hi(max_tokens=5, include_usage=True), timeout=10))

    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert all(c.model == "chat:v1" for c in chunks)
    finished = [ch.finish_reason for c in chunks for ch in c.choices if ch.HasField("finish_reason")]
    assert finished == ["length"]
    text = "".join(ch.delta.content for c in chunks for ch in c.choices)
    assert text
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == 5
    assert not any(c.HasField("usage") for c in list(stub.Chat(hi(max_tokens=3), timeout=10)))


def test_chat_complete_and_version_pinning(door: tuple[Door, RunningSim]) -> None:
    stub = door[0].stub
    answer, call = stub.ChatComplete.with_call(hi("chat:v2", max_tokens=4, temperature=0.0), timeout=10)

    assert answer.model == "chat:v2"
    assert answer.choices[0].message.role == "assistant" and answer.choices[0].message.content
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 4
    served = dict(call.trailing_metadata())
    assert served["x-offload-model"] == "chat:v2" and served["x-offload-version"] == "v2"
    assert stub.ChatComplete(hi("chat:stable", max_tokens=2), timeout=10).model == "chat:v1"


def test_embed_and_list_models(door: tuple[Door, RunningSim]) -> None:
    stub = door[0].stub
    answer = stub.Embed(pb.EmbedRequest(model="emb", input=["one", "two"]), timeout=10)
    assert [len(e.embedding) for e in answer.data] == [32, 32] and [e.index for e in answer.data] == [0, 1]
    assert answer.model == "emb" and answer.usage.prompt_tokens > 0

    models = {m.id: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).data}
    assert set(models) == {"chat", "chat:v1", "chat:v2", "chat:stable", "emb"}
    assert list(models["chat"].versions) == ["chat:v1", "chat:v2"]
    assert models["chat:stable"].alias_of == "chat:v1" and models["chat:v2"].parent == "chat"


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (hi("nope"), grpc.StatusCode.NOT_FOUND, "does not exist"),
        (pb.ChatRequest(model="chat"), grpc.StatusCode.INVALID_ARGUMENT, "messages"),
        (hi(temperature=5.0), grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
        (hi(extra_json="[1]"), grpc.StatusCode.INVALID_ARGUMENT, "extra_json"),
        (hi("emb"), grpc.StatusCode.INVALID_ARGUMENT, "does not support chat"),
    ],
)
def test_client_mistakes_are_statuses_with_the_openai_message(
    door: tuple[Door, RunningSim], request_: pb.ChatRequest, code: grpc.StatusCode, message: str
) -> None:
    for rpc in (door[0].stub.ChatComplete, lambda r, timeout: list(door[0].stub.Chat(r, timeout=timeout))):
        with pytest.raises(grpc.RpcError) as caught:
            rpc(request_, timeout=10)
        assert caught.value.code() == code
        assert message in caught.value.details()


def test_extra_json_reaches_the_engine(door: tuple[Door, RunningSim]) -> None:
    answer = door[0].stub.ChatComplete(hi(extra_json='{"max_tokens": 2, "ignore_eos": true}'), timeout=10)
    assert answer.usage.completion_tokens == 2


def test_calls_are_counted_and_logged_like_http(door: tuple[Door, RunningSim]) -> None:
    gw = door[0].gw
    door[0].stub.ChatComplete(hi(max_tokens=2), metadata=[("x-request-id", "grpc-counted")], timeout=10)
    line = gw.summary("grpc-counted")
    assert line["route"] == "/v1/chat/completions" and line["status"] == 200 and line["served"] == "chat:v1"
    metrics = httpx.get(gw.base_url + "/metrics").text
    assert re.search(
        r'offload_requests_total\{endpoint="/v1/chat/completions",model="chat".*status="200"', metrics
    )


def test_health_and_reflection(door: tuple[Door, RunningSim]) -> None:
    channel = door[0].channel
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "offload.v1.Offload"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    asked = reflection_pb2.ServerReflectionRequest(list_services="")
    listed = next(iter(reflection.ServerReflectionInfo(iter([asked]), timeout=5)))
    names = {s.name for s in listed.list_services_response.service}
    assert {"offload.v1.Offload", "grpc.health.v1.Health"} <= names


def test_a_cancelled_chat_aborts_the_engine_request_within_a_second(
    start_sim: Callable[[SimConfig], RunningSim], tmp_path: Path
) -> None:
    sim = start_sim(SimConfig(model="sim", knobs=Knobs(itl=0.05, output_tokens=400)))  # a 20 s stream
    opened = Door(tmp_path, _models(sim))
    try:
        call = opened.stub.Chat(hi(), metadata=[("x-request-id", "grpc-cancelled")], timeout=60)
        next(call)
        next(call)
        assert sim.metric("vllm:num_requests_running") == 1
        call.cancel()
        cancelled = time.monotonic()
        assert sim.wait_for_metric("vllm:num_requests_running", 0, within=3) == 0
        assert time.monotonic() - cancelled < 1.0
        line = opened.gw.summary("grpc-cancelled")
        assert line["error"] == "client_disconnected"
    finally:
        opened.close()


def test_keys_and_limits_apply(start_sim: Callable[[SimConfig], RunningSim], tmp_path: Path) -> None:
    sim = start_sim(SimConfig(model="sim", knobs=Knobs(output_tokens=4)))
    keys = [
        {"name": "full", "hash": hash_key(KEY), "models": ["chat"]},
        {"name": "limited", "hash": hash_key(LIMITED), "rpm": 1},
    ]
    opened = Door(tmp_path, _models(sim), {"auth": {"keys": keys}})
    stub = opened.stub
    try:
        for metadata in ((), (("authorization", "Bearer ofl-wrong"),)):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "API key" in caught.value.details()

        full = (("authorization", f"Bearer {KEY}"),)
        assert stub.ChatComplete(hi(max_tokens=2), metadata=full, timeout=10).usage.completion_tokens == 2
        assert {m.id for m in stub.ListModels(pb.ListModelsRequest(), metadata=full).data} == {
            "chat",
            "chat:v1",
            "chat:v2",
            "chat:stable",
        }
        with pytest.raises(grpc.RpcError) as caught:  # a model the key may not use
            stub.Embed(pb.EmbedRequest(model="emb", input=["x"]), metadata=full, timeout=5)
        assert caught.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED)

        limited = (("authorization", f"Bearer {LIMITED}"),)
        stub.ChatComplete(hi(max_tokens=2), metadata=limited, timeout=10)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Chat(hi(max_tokens=2), metadata=limited, timeout=10))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert dict(caught.value.trailing_metadata()).get("retry-after")
    finally:
        opened.close()


def test_the_door_is_off_by_default(sim: RunningSim, tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, _models(sim)).start()
    try:
        assert "gRPC door open" not in gw.log()
    finally:
        gw.stop()


def test_sigterm_turns_health_not_serving_and_lets_an_open_chat_finish(
    start_sim: Callable[[SimConfig], RunningSim], tmp_path: Path
) -> None:
    sim = start_sim(SimConfig(model="sim", knobs=Knobs(itl=0.05, output_tokens=40)))  # a 2 s stream
    opened = Door(tmp_path, _models(sim), env={"OFFLOAD_SERVER__DRAIN_GRACE": "1"})
    health = health_pb2_grpc.HealthStub(opened.channel)
    asked = health_pb2.HealthCheckRequest(service="offload.v1.Offload")
    try:
        call = opened.stub.Chat(hi(), timeout=30)
        first = next(call)
        assert opened.gw.proc is not None
        opened.gw.proc.send_signal(signal.SIGTERM)
        wait_until(
            lambda: health.Check(asked, timeout=2).status == health_pb2.HealthCheckResponse.NOT_SERVING,
            1,
            0.02,
            "gRPC health NOT_SERVING",
        )
        rest = list(call)
        assert [first, *rest][-1].choices[0].finish_reason == "stop"
        assert opened.gw.proc.wait(timeout=15) == 0
    finally:
        opened.close()


def test_a_stream_that_breaks_mid_answer_ends_unavailable(
    start_sim: Callable[[SimConfig], RunningSim], tmp_path: Path
) -> None:
    sim = start_sim(SimConfig(model="sim", knobs=Knobs(output_tokens=20, reset_after=4)))
    opened = Door(tmp_path, _models(sim))
    try:
        received: list[pb.ChatChunk] = []
        with pytest.raises(grpc.RpcError) as caught:
            received.extend(opened.stub.Chat(hi(), timeout=30))
        assert received, "the stream broke before its first chunk"
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "Traceback" not in caught.value.details() and "127.0.0.1" not in caught.value.details()
    finally:
        opened.close()


def test_a_grpc_port_in_use_is_refused_in_words(sim: RunningSim, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gw = GatewayProcess(tmp_path, _models(sim), {"OFFLOAD_SERVER__GRPC_PORT": str(port)})
        done = gw.run_to_exit()
    assert done.returncode == 1
    assert f"offload: cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr
    assert "Traceback" not in done.stderr
