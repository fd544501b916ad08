"""Versions over two real vLLM engines: pinned, aliased, weighted, sticky and shadow routing, reload."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from openai import OpenAI

from tests.integration.conftest import CHAT, CHAT_V2, Engines
from tests.integration.servers import GatewayProcess, engine_gauge, eventually, wait_until

HI = [{"role": "user", "content": "Say hi."}]


def _versions(
    engines: Engines, v1_weight: float = 50, v2_weight: float = 50, shadow: float = 0
) -> list[dict]:
    return [
        {
            "name": "chat",
            "task": "chat",
            "versions": {
                "v1": {"weight": v1_weight, "engines": [{"url": engines.url(CHAT), "served_name": CHAT}]},
                "v2": {
                    "weight": v2_weight,
                    "engines": [{"url": engines.url(CHAT_V2), "served_name": CHAT_V2}],
                },
                "v3": {"shadow": shadow, "engines": [{"url": engines.url(CHAT_V2), "served_name": CHAT_V2}]},
            },
            "aliases": {"stable": "v1", "latest": "v2"},
        }
    ]


@pytest.fixture(scope="module")
def versions_gateway(engines: Engines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(
        tmp_path_factory.mktemp("versions"), _versions(engines), {"OFFLOAD_RELOAD__WATCH_INTERVAL": "0.2"}
    ).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def vclient(versions_gateway: GatewayProcess) -> OpenAI:
    return OpenAI(base_url=versions_gateway.base_url + "/v1", api_key="x", max_retries=0, timeout=120)


def _served(client: OpenAI, model: str, session: str | None = None) -> tuple[str, httpx.Headers]:
    headers = {"X-Session-Id": session} if session else {}
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=HI, max_tokens=1, extra_headers=headers
    )
    return raw.parse().model, raw.headers


@pytest.mark.parametrize(
    ("model", "version"), [("chat:v1", "v1"), ("chat:v2", "v2"), ("chat:stable", "v1"), ("chat:latest", "v2")]
)
def test_pinned_and_aliased_versions_say_what_served_them(vclient: OpenAI, model: str, version: str) -> None:
    served, headers = _served(vclient, model)
    assert served == f"chat:{version}"
    assert headers["x-offload-version"] == version
    assert headers["x-offload-replica"] == f"chat-{version}-0"
    assert headers["x-offload-model"] == f"chat:{version}"


def test_pinned_version_really_runs_on_its_engine(vclient: OpenAI, engines: Engines) -> None:
    before = engine_gauge(engines.url(CHAT_V2), "vllm:request_success_total")
    for _ in range(3):
        _served(vclient, "chat:v2")
    # The engine counts a request on its own schedule, maybe after the answer went out.
    wait_until(
        lambda: engine_gauge(engines.url(CHAT_V2), "vllm:request_success_total") >= before + 3,
        10,
        interval=0.05,
        what="3 more requests counted by the v2 engine",
    )


def test_stream_chunks_carry_the_version(vclient: OpenAI) -> None:
    chunks = list(vclient.chat.completions.create(model="chat:v2", messages=HI, stream=True, max_tokens=3))
    assert {c.model for c in chunks} == {"chat:v2"}


def test_unknown_version_is_404_naming_versions(vclient: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        vclient.chat.completions.create(model="chat:v9", messages=HI)
    assert err.value.code == "model_not_found" and "chat:v1" in err.value.message


def test_weights_split_unpinned_traffic(vclient: OpenAI) -> None:
    seen = [_served(vclient, "chat")[0] for _ in range(24)]
    assert set(seen) == {"chat:v1", "chat:v2"}, seen  # 50/50: both show up (p of one-sided < 1e-6)


def test_sticky_sessions_stay_on_one_version(vclient: OpenAI) -> None:
    per_session = {}
    for i in range(12):
        versions = {_served(vclient, "chat", session=f"user-{i}")[0] for _ in range(3)}
        assert len(versions) == 1, f"session user-{i} moved between {versions}"
        per_session[i] = versions.pop()
    assert set(per_session.values()) == {"chat:v1", "chat:v2"}
    # the request's `user` field is the session key when no header is sent
    users = {
        vclient.chat.completions.create(model="chat", messages=HI, max_tokens=1, user="alice").model
        for _ in range(4)
    }
    assert len(users) == 1


def test_models_list_names_versions_and_aliases(vclient: OpenAI) -> None:
    ids = {m.id for m in vclient.models.list()}
    assert {"chat", "chat:v1", "chat:v2", "chat:v3", "chat:stable", "chat:latest"} <= ids


def test_shadow_copies_are_sent_but_never_answer(engines: Engines, tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, _versions(engines, 1, 0, shadow=100)).start()
    try:
        client = OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0)
        before = engine_gauge(engines.url(CHAT_V2), "vllm:request_success_total")
        for _ in range(4):
            assert client.chat.completions.create(model="chat", messages=HI, max_tokens=2).model == "chat:v1"

        def shadowed() -> None:
            # Copies finish after their requests were answered: their counts are waited for.
            text = httpx.get(gw.base_url + "/metrics").text
            m = re.search(
                r'offload_shadow_requests_total\{model="chat",outcome="ok",replica="chat-v3-0",version="v3"\} (\S+)',
                text,
            )
            assert m is not None and float(m.group(1)) == 4, "4 shadow copies recorded"
            assert (
                'offload_shadow_duration_seconds_count{model="chat",replica="chat-v3-0",version="v3"} 4.0'
                in text
            )
            assert engine_gauge(engines.url(CHAT_V2), "vllm:request_success_total") >= before + 4

        eventually(shadowed, 30)
    finally:
        gw.stop()


def test_reweighting_by_editing_the_file_takes_effect_without_dropping_a_stream(
    versions_gateway: GatewayProcess, vclient: OpenAI, engines: Engines
) -> None:
    stream = vclient.chat.completions.create(
        model="chat:v1", messages=HI, stream=True, max_tokens=60, extra_body={"ignore_eos": True}
    )
    first = next(iter(stream))
    mark = versions_gateway.log_mark()
    versions_gateway.config_path.write_text(yaml.safe_dump({"models": _versions(engines, 0, 100)}))
    try:
        versions_gateway.wait_for_log("configuration reloaded", since=mark)
        rest = list(stream)
        tokens = sum(1 for c in [first, *rest] for ch in c.choices if ch.delta.content)
        assert [ch.finish_reason for c in rest for ch in c.choices if ch.finish_reason] == ["length"]
        assert tokens >= 55
        seen = {_served(vclient, "chat", session=f"s{i}")[0] for i in range(10)}
        assert seen == {"chat:v2"}
    finally:
        mark = versions_gateway.log_mark()
        versions_gateway.config_path.write_text(yaml.safe_dump({"models": _versions(engines)}))
        versions_gateway.wait_for_log("configuration reloaded", since=mark)  # back to 50/50


def test_sighup_reloads_and_invalid_file_keeps_running_config(engines: Engines, tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, _versions(engines, 1, 0), {"OFFLOAD_RELOAD__WATCH_INTERVAL": "0"}).start()
    try:
        client = OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0)
        assert _served(client, "chat")[0] == "chat:v1"
        gw.config_path.write_text("models: [ {name: chat, task: nope} ]")
        assert gw.proc is not None
        mark = gw.log_mark()
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait_for_log("reload rejected", since=mark)
        assert _served(client, "chat")[0] == "chat:v1"
        gw.config_path.write_text(yaml.safe_dump({"models": _versions(engines, 0, 1)}))
        mark = gw.log_mark()
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait_for_log("configuration reloaded", since=mark)
        assert _served(client, "chat")[0] == "chat:v2"
    finally:
        gw.stop()
