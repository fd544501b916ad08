"""The engine serving eight streams killed mid-answer (real vLLM, two replicas of SmolLM2): every stream
goes on from the other replica and ends well (gateway/services/resume.py)."""

from __future__ import annotations

import difflib
import os
import signal
import threading
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.integration.conftest import CHAT, CHAT_V2, Engines
from tests.integration.servers import GatewayProcess, engine_gauge, wait_until

pytestmark = pytest.mark.destructive

STREAMS, TOKENS, BREAK_AT = 8, 128, 20
REQUEST = {
    "model": "pool",
    "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
    "max_tokens": TOKENS,
    "temperature": 0,
    "stream": True,
    "stream_options": {"include_usage": True},
    "extra_body": {"ignore_eos": True},
}


class Reader(threading.Thread):
    """One streaming client: its text, finish reasons, usage, error."""

    def __init__(self, client: OpenAI) -> None:
        super().__init__()
        self.client = client
        self.pieces: list[str] = []
        self.finishes: list[str] = []
        self.usage: object = None
        self.error: str | None = None

    def run(self) -> None:
        try:
            for chunk in self.client.chat.completions.create(**REQUEST):  # type: ignore[call-overload]
                if chunk.usage is not None:
                    self.usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta.content:
                        self.pieces.append(choice.delta.content)
                    if choice.finish_reason:
                        self.finishes.append(choice.finish_reason)
        except openai.APIError as exc:
            self.error = f"{type(exc).__name__}: {exc}"


def test_killing_the_engine_of_eight_streams_mid_answer_loses_none(
    engines: Engines, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    # prefix_affinity with one prompt: all eight streams go to the same replica, the one killed.
    urls = [{"url": engines.url(name), "served_name": name} for name in (CHAT, CHAT_V2)]
    gw = GatewayProcess(
        tmp_path, [{"name": "pool", "task": "chat", "policy": "prefix_affinity", "engines": urls}]
    )
    gw.start()
    client = OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0, timeout=600)
    killed = False
    try:
        served_before = {
            name: engine_gauge(engines.url(name), "vllm:request_success_total") for name in (CHAT, CHAT_V2)
        }
        reference = Reader(client)
        reference.run()  # an unbroken answer, for how close the continued ones come
        assert reference.error is None and len(reference.pieces) >= TOKENS - 8
        # The replica that answered the reference is the one the streams will go to (same prompt): known
        # now, while the engines are idle, so the kill follows the 20th token without a pause to ask them.
        served = {
            name: engine_gauge(engines.url(name), "vllm:request_success_total") - served_before[name]
            for name in (CHAT, CHAT_V2)
        }
        assert sorted(served.values()) == [0, 1], served
        victim = engines.by_name[max(served, key=lambda n: served[n])]
        assert victim.pid is not None

        readers = [Reader(client) for _ in range(STREAMS)]
        for r in readers:
            r.start()
        # The engine may not run all eight at once (its scheduler staggers them): the kill comes once
        # half of them are 20 tokens in, and whatever each stream was doing then (waiting for its first
        # token, mid-answer, done) it must end whole.
        wait_until(
            lambda: sum(len(r.pieces) >= BREAK_AT for r in readers) >= STREAMS // 2,
            300,
            interval=0.05,
            what="20 tokens in half the streams",
        )
        mid_answer = sum(bool(r.pieces) and not r.finishes for r in readers)
        os.killpg(victim.pid, signal.SIGKILL)
        killed = True
        record_property("mid_answer_at_kill", mid_answer)
        assert mid_answer >= 1, "no stream was mid-answer at the kill"
        for r in readers:
            r.join(timeout=600)

        assert all(not r.is_alive() for r in readers)
        assert [r.error for r in readers] == [None] * STREAMS
        assert [r.finishes for r in readers] == [["length"]] * STREAMS
        metrics = httpx.get(gw.base_url + "/metrics").text
        assert 'offload_stream_resumes_total{model="pool",outcome="resumed"' in metrics
        # How close the continued answers come to the unbroken one (greedy, but batched differently:
        # reported, not asserted), and the completion tokens the client was told.
        whole = "".join(reference.pieces)
        similarity = [difflib.SequenceMatcher(None, whole, "".join(r.pieces)).ratio() for r in readers]
        record_property("similarity_to_unbroken", [round(s, 3) for s in similarity])
        record_property("completion_tokens", [getattr(r.usage, "completion_tokens", None) for r in readers])
        print(
            f"{mid_answer} mid-answer at the kill; similarity {similarity}; usage {[r.usage for r in readers]}"
        )
    finally:
        gw.stop()
        if killed:  # the next tests need both engines
            victim.start()
            wait_until(victim.is_healthy, 600, interval=1, what="the killed engine back")
