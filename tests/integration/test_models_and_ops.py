"""/v1/models, /health, /ready and /metrics of a gateway in front of real engines."""

from __future__ import annotations

import httpx
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import CHAT, EMBED
from tests.integration.servers import GatewayProcess, eventually


def test_models_list_names_both_models(client: OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert ids == {CHAT, EMBED}
    assert client.models.retrieve(CHAT).id == CHAT


def test_health_and_ready_are_200_with_engines_up(gateway: GatewayProcess) -> None:
    assert httpx.get(gateway.base_url + "/health").status_code == 200
    ready = httpx.get(gateway.base_url + "/ready")
    assert ready.status_code == 200
    assert ready.json()["models"] == {CHAT: True, EMBED: True}


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def test_metrics_count_requests_tokens_and_latency_by_model(client: OpenAI, gateway: GatewayProcess) -> None:
    list(
        client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "Hi"}], stream=True, max_tokens=4
        )
    )
    served = {"model": CHAT, "replica": f"{CHAT}-0"}

    def counted() -> None:
        # The request is counted once its response is sent: maybe just after the client read [DONE].
        samples = _samples(httpx.get(gateway.base_url + "/metrics").text)

        def value(name: str, **labels: str) -> float:
            return sum(
                v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())
            )

        assert value("offload_requests_total", endpoint="/v1/chat/completions", status="200", **served) >= 1
        assert value("offload_completion_tokens_total", **served) >= 4
        assert value("offload_time_to_first_token_seconds_count", **served) >= 1
        assert value("offload_inter_token_latency_seconds_count", **served) >= 3
        assert value("offload_requests_in_flight", model=CHAT) == 0
        assert value("offload_replica_up", **served) == 1
        assert value("offload_routing_decisions_total", model=CHAT, reason="only") >= 1

    eventually(counted)


def test_log_has_one_summary_line_without_prompt_text(client: OpenAI, gateway: GatewayProcess) -> None:
    secret = "zebra-quartz-7781"
    client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": secret}],
        max_tokens=2,
        extra_headers={"X-Request-Id": "no-prompt-in-log"},
    )
    line = gateway.summary("no-prompt-in-log")  # written once the response is sent: waited for
    assert "ttft_ms" in line and "duration_ms" in line
    assert line["status"] == 200 and line["completion_tokens"] >= 1
    assert secret not in gateway.log()
