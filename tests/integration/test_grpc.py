"""The gRPC door in front of real vLLM engines: the generated Python stub as the client, a gateway
process with ``OFFLOAD_SERVER__GRPC_PORT`` set (the simulator covers the rest: tests/sim/test_grpc.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.rpc.generated import offload_pb2 as pb
from gateway.rpc.generated import offload_pb2_grpc as pb_grpc
from tests.integration.conftest import CHAT, EMBED, Engines
from tests.integration.servers import GatewayProcess, engine_gauge, engine_idle_after, free_port, wait_until


def ask(text: str, **fields: object) -> pb.ChatRequest:
    return pb.ChatRequest(model=CHAT, messages=[pb.ChatMessage(role="user", content=text)], **fields)


@pytest.fixture(scope="module")
def grpc_gateway(
    engines: Engines, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, grpc.Channel]]:
    port = free_port()
    gw = GatewayProcess(
        tmp_path_factory.mktemp("grpc"), engines.gateway_models(), {"OFFLOAD_SERVER__GRPC_PORT": str(port)}
    ).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=10)
    yield gw, channel
    channel.close()
    gw.stop()


@pytest.fixture(scope="module")
def stub(grpc_gateway: tuple[GatewayProcess, grpc.Channel]) -> pb_grpc.OffloadStub:
    return pb_grpc.OffloadStub(grpc_gateway[1])


def test_chat_streams_token_chunks_and_ends_with_a_finish_reason(stub: pb_grpc.OffloadStub) -> None:
    chunks = list(stub.Chat(ask("Count from one to five.", max_tokens=12, include_usage=True), timeout=120))

    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and all(c.model == CHAT for c in chunks)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2
    finished = [ch.finish_reason for c in chunks for ch in c.choices if ch.HasField("finish_reason")]
    assert finished in (["length"], ["stop"])
    assert chunks[-1].usage.completion_tokens > 0 and chunks[-1].usage.prompt_tokens > 0


def test_chat_complete(stub: pb_grpc.OffloadStub) -> None:
    answer = stub.ChatComplete(ask("Say hello.", max_tokens=8, temperature=0.0, seed=1), timeout=120)
    assert answer.model == CHAT and answer.choices[0].message.content.strip()
    assert answer.choices[0].finish_reason in ("length", "stop") and answer.usage.total_tokens > 0


def test_embed_gives_384_dimensions_for_minilm(stub: pb_grpc.OffloadStub) -> None:
    answer = stub.Embed(pb.EmbedRequest(model=EMBED, input=["a cat", "a dog"]), timeout=60)
    assert [len(e.embedding) for e in answer.data] == [384, 384]
    assert answer.data[0].embedding != answer.data[1].embedding


def test_list_models_and_an_unknown_model(stub: pb_grpc.OffloadStub) -> None:
    assert {m.id for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).data} == {CHAT, EMBED}
    with pytest.raises(grpc.RpcError) as caught:
        stub.ChatComplete(pb.ChatRequest(model="no-such-model", messages=[pb.ChatMessage(role="user")]))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in caught.value.details()


def test_health_is_serving_and_reflection_lists_the_service(
    grpc_gateway: tuple[GatewayProcess, grpc.Channel],
) -> None:
    channel = grpc_gateway[1]
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="offload.v1.Offload"), timeout=5
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    asked = reflection_pb2.ServerReflectionRequest(list_services="")
    listed = next(iter(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([asked]))))
    assert "offload.v1.Offload" in {s.name for s in listed.list_services_response.service}


def test_a_cancelled_chat_aborts_the_engine_request_within_a_second(
    stub: pb_grpc.OffloadStub, engines: Engines
) -> None:
    url = engines.url(CHAT)
    wait_until(lambda: engine_gauge(url, "vllm:num_requests_running") == 0, 30, what="an idle engine")
    long = ask("Write a long story about the sea.", max_tokens=1000, extra_json='{"ignore_eos": true}')
    call = stub.Chat(long, timeout=300)
    for _ in range(3):
        next(call)  # the engine is generating
    assert engine_gauge(url, "vllm:num_requests_running") == 1
    call.cancel()
    cancelled = time.monotonic()
    took = engine_idle_after(url, cancelled)
    assert took < 1.0, f"the engine still ran the request {took:.2f} s after the call was cancelled"
