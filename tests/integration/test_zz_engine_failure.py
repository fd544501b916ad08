"""An engine killed while the gateway runs: in-band error mid-stream, 503 while down, recovery after."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import openai
import pytest
from openai import OpenAI

from tests.integration.conftest import CHAT, EMBED, Engines
from tests.integration.servers import GatewayProcess, wait_until

pytestmark = pytest.mark.destructive


def test_killed_engine_gives_in_band_error_then_503_then_recovers(
    client: OpenAI, gateway: GatewayProcess, engines: Engines
) -> None:
    engine = engines.by_name[CHAT]
    stream = client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Tell me a long story."}],
        stream=True,
        max_tokens=2000,
        extra_body={"ignore_eos": True},
    )
    received = 0
    with pytest.raises(openai.APIError) as err:
        for _chunk in stream:
            received += 1
            if received == 5:
                assert engine.pid is not None
                os.killpg(engine.pid, signal.SIGKILL)  # the engine and its EngineCore/Worker
    assert received >= 5
    assert "engine" in str(err.value).lower()

    # Once the gateway has seen it down (its probe is refused; a request sent before that may meet a
    # half-dead socket and get 502, which the SDK retries too): 503 with Retry-After, and the gateway
    # stays up and in service for its other model.
    wait_until(
        lambda: httpx.get(gateway.base_url + "/ready").json()["models"][CHAT] is False,
        10,
        what="the gateway marks the killed engine down",
    )
    with pytest.raises(openai.InternalServerError) as down:
        client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "hi"}])
    assert down.value.status_code == 503
    assert down.value.response.headers.get("retry-after")
    assert httpx.get(gateway.base_url + "/health").status_code == 200
    ready = httpx.get(gateway.base_url + "/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "degraded", "models": {CHAT: False, EMBED: True}}
    assert httpx.get(gateway.base_url + "/ready?all=true").status_code == 503
    # the other model is unaffected
    assert client.embeddings.create(model=EMBED, input="still here").data
    # a burst of requests meanwhile: all answered 503 quickly, none leaks an engine address
    answers: list[httpx.Response] = []

    def hit() -> None:
        answers.append(
            httpx.post(
                gateway.base_url + "/v1/chat/completions",
                timeout=30,
                json={"model": CHAT, "messages": [{"role": "user", "content": "hi"}]},
            )
        )

    threads = [threading.Thread(target=hit) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 20 and {a.status_code for a in answers} == {503}
    assert not any("127.0.0.1" in a.text for a in answers)
    assert httpx.get(gateway.base_url + "/health").status_code == 200

    engine.stop()  # reap what is left of the group
    engine.start()
    restarted = time.monotonic()
    wait_until(engine.check_started, 300, interval=1, what="engine restart")
    wait_until(
        lambda: httpx.get(gateway.base_url + "/ready?all=true").status_code == 200, 10, what="gateway ready"
    )
    recovered = time.monotonic() - restarted
    reply = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "What is the capital of France?"}]
    )
    assert "Paris" in (reply.choices[0].message.content or "")
    print(f"\nengine restart to gateway ready: {recovered:.1f} s")
