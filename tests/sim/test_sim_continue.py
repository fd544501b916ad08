"""Continuing a broken answer: ``continue_final_message`` on the simulator, and the faults that break
a stream after K tokens (reset, clean close without ``[DONE]``, stall), per instance and per scope.

The resume the gateway does: the original messages plus an assistant message holding exactly the text
relayed so far, ``continue_final_message: true``, ``add_generation_prompt: false`` and ``max_tokens``
reduced by the tokens already sent, sent to another replica.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from engines.sim import Knobs, SimConfig
from engines.sim.__main__ import parse_args
from engines.sim.answer import Answer, conversation_key, match_prefix
from engines.sim.chat import BOTH_FLAGS, DEFAULT_GENERATION_PROMPT, NO_CONTENT, NOT_ASSISTANT
from tests.sim.conftest import RunningSim

StartSim = Callable[[SimConfig], RunningSim]
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Tell me about foxes."},
]
TOKENS = 32
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}


@dataclass
class Streamed:
    """What a client saw of one streamed answer."""

    status: int
    headers: httpx.Headers
    chunks: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    """``data: [DONE]`` arrived."""
    broken: Exception | None = None
    """The transport error that ended the stream (a reset), if any."""

    @property
    def contents(self) -> list[str]:
        """Each token event's content, in order (the role event and the usage event excluded)."""
        return [
            c["choices"][0]["delta"]["content"]
            for c in self.chunks
            if c["choices"] and "role" not in c["choices"][0]["delta"]
        ]

    @property
    def text(self) -> str:
        return "".join(self.contents)

    @property
    def finish_reasons(self) -> list[str]:
        return [ch["finish_reason"] for c in self.chunks for ch in c["choices"] if ch["finish_reason"]]

    @property
    def usage(self) -> dict[str, int]:
        usage = self.chunks[-1].get("usage")
        assert usage is not None, "no usage event"
        return dict(usage)


def stream(sim: RunningSim, body: dict[str, Any]) -> Streamed:
    """POST a streamed chat request with httpx and read its SSE events until the end or a break."""
    payload = {"model": "sim", "stream": True, "stream_options": {"include_usage": True}, **body}
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", sim.base_url + "/v1/chat/completions", json=payload) as reply,
    ):
        seen = Streamed(reply.status_code, reply.headers)
        try:
            for line in reply.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                assert not seen.done, "an event after [DONE]"
                if data == "[DONE]":
                    seen.done = True
                else:
                    seen.chunks.append(orjson.loads(data))
        except httpx.TransportError as exc:
            seen.broken = exc
    return seen


def complete(sim: RunningSim, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(sim.base_url + "/v1/chat/completions", json={"model": "sim", **body}, timeout=10)


def continuation(prefix: str, max_tokens: int, messages: list[dict[str, Any]] = MESSAGES) -> dict[str, Any]:
    return {
        "messages": [*messages, {"role": "assistant", "content": prefix}],
        "max_tokens": max_tokens,
        **CONTINUE,
    }


# (output_tokens knob, the client's max_tokens): both make a 32-token answer, ending with each reason.
ENDINGS = {"stop": (TOKENS, 40), "length": (100, TOKENS)}


@pytest.mark.parametrize("ending", ["stop", "length"])
@pytest.mark.parametrize("continue_streamed", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("k", [1, 5, 31])
def test_an_answer_reset_after_k_tokens_continues_on_another_replica_byte_for_byte(
    start_sim: StartSim, k: int, continue_streamed: bool, ending: str
) -> None:
    output_tokens, max_tokens = ENDINGS[ending]
    # one role event, then one event per token: a reset after K tokens is a reset after K + 1 events
    broken = start_sim(SimConfig(knobs=Knobs(output_tokens=output_tokens, reset_after=k + 1)))
    healthy = start_sim(SimConfig(knobs=Knobs(output_tokens=output_tokens)))

    whole = stream(healthy, {"messages": MESSAGES, "max_tokens": max_tokens})
    assert whole.done and whole.broken is None
    assert len(whole.contents) == TOKENS and whole.usage["completion_tokens"] == TOKENS
    assert whole.finish_reasons == [ending]
    assert (
        whole.text
        == complete(healthy, {"messages": MESSAGES, "max_tokens": max_tokens}).json()["choices"][0][
            "message"
        ]["content"]
    )

    first = stream(broken, {"messages": MESSAGES, "max_tokens": max_tokens})
    assert first.broken is not None and not first.done
    assert first.chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(first.contents) == k
    assert first.finish_reasons == []
    assert broken.wait_for_metric("vllm:num_requests_running", 0) == 0
    prefix = first.text

    body = continuation(prefix, max_tokens - k)
    if continue_streamed:
        rest = stream(healthy, body)
        assert rest.status == 200 and rest.done and rest.broken is None
        assert rest.chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        text, finishes, usage, headers = rest.text, rest.finish_reasons, rest.usage, rest.headers
        assert len(rest.contents) == usage["completion_tokens"]
    else:
        reply = complete(healthy, body)
        assert reply.status_code == 200
        answer = reply.json()
        choice = answer["choices"][0]
        assert choice["message"]["role"] == "assistant"
        text, finishes, usage, headers = (
            choice["message"]["content"],
            [choice["finish_reason"]],
            answer["usage"],
            reply.headers,
        )

    assert prefix + text == whole.text
    assert (prefix + text).encode() == whole.text.encode()
    assert k + usage["completion_tokens"] == whole.usage["completion_tokens"]
    assert first.finish_reasons + finishes == [ending]
    assert usage["prompt_tokens"] == whole.usage["prompt_tokens"] + k  # the prefix is prompt now
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert (headers["x-sim-continue-match"], headers["x-sim-continue-position"]) == ("exact", str(k))
    assert healthy.engine.continued == {"exact": 1}


def test_the_sequence_depends_on_the_conversation_and_seed_only(start_sim: StartSim) -> None:
    sim = start_sim(SimConfig(aliases=("other-name",), knobs=Knobs(output_tokens=TOKENS)))

    def text(**body: Any) -> str:
        reply = complete(sim, {"messages": MESSAGES, **body})
        assert reply.status_code == 200, reply.text
        return str(reply.json()["choices"][0]["message"]["content"])

    base = text()
    assert text(model="other-name", max_tokens=64, temperature=0.3, n=2) == base
    assert stream(sim, {"messages": MESSAGES}).text == base
    assert (
        text(max_tokens=7)
        == complete(sim, {"messages": MESSAGES, "max_tokens": 7}).json()["choices"][0]["message"]["content"]
    )
    assert base.startswith(text(max_tokens=7))
    assert text(seed=1) != base and text(seed=1) == text(seed=1, max_tokens=40)
    other = [*MESSAGES[:-1], {"role": "user", "content": "Tell me about dogs."}]
    assert complete(sim, {"messages": other}).json()["choices"][0]["message"]["content"] != base
    # content given as text parts is the same conversation as the same text given as a string
    parts = [MESSAGES[0], {"role": "user", "content": [{"type": "text", "text": MESSAGES[1]["content"]}]}]
    assert complete(sim, {"messages": parts}).json()["choices"][0]["message"]["content"] == base


def test_a_prefix_that_ends_inside_a_token_is_completed_from_the_rest_of_that_token(
    start_sim: StartSim,
) -> None:
    sim = start_sim(SimConfig(knobs=Knobs(output_tokens=TOKENS)))
    whole = stream(sim, {"messages": MESSAGES})
    k = next(i for i, token in enumerate(whole.contents) if i >= 3 and len(token) >= 3)
    prefix = "".join(whole.contents[:k]) + whole.contents[k][:2]
    rest = stream(sim, continuation(prefix, 100))
    assert rest.done and rest.broken is None
    assert prefix + rest.text == whole.text
    assert rest.contents[0] == whole.contents[k][2:]
    assert rest.usage["completion_tokens"] == TOKENS - k
    assert rest.headers["x-sim-continue-match"] == "partial"
    assert rest.headers["x-sim-continue-position"] == str(k)
    assert rest.finish_reasons == ["stop"]


def test_a_prefix_that_leaves_the_sequence_resumes_after_its_last_matching_token(start_sim: StartSim) -> None:
    sim = start_sim(SimConfig(knobs=Knobs(output_tokens=TOKENS)))
    whole = stream(sim, {"messages": MESSAGES})
    matching = "".join(whole.contents[:5])
    rest = stream(sim, continuation(matching + "#not the answer#", 100))
    assert rest.done and rest.headers["x-sim-continue-match"] == "mismatch"
    assert rest.headers["x-sim-continue-position"] == "5"
    assert rest.text == "".join(whole.contents[5:])  # joined with the wrong prefix, it is not the answer
    assert sim.engine.continued == {"mismatch": 1}


def test_continuing_a_finished_answer_generates_nothing_and_stops(start_sim: StartSim) -> None:
    sim = start_sim(SimConfig(knobs=Knobs(output_tokens=8)))
    whole = stream(sim, {"messages": MESSAGES})
    rest = stream(sim, continuation(whole.text, 10))
    assert rest.done and rest.text == "" and rest.finish_reasons == ["stop"]
    assert rest.usage["completion_tokens"] == 0
    reply = complete(sim, continuation(whole.text, 10)).json()
    assert reply["choices"][0]["message"]["content"] == ""
    assert reply["choices"][0]["finish_reason"] == "stop"


def test_an_empty_prefix_continues_from_the_start(start_sim: StartSim) -> None:
    sim = start_sim(SimConfig(knobs=Knobs(output_tokens=TOKENS)))
    whole = complete(sim, {"messages": MESSAGES}).json()
    rest = complete(sim, continuation("", 100)).json()
    assert rest["choices"][0]["message"]["content"] == whole["choices"][0]["message"]["content"]
    assert rest["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"add_generation_prompt": True}, BOTH_FLAGS),
        ({"add_generation_prompt": None}, DEFAULT_GENERATION_PROMPT),
        ({"messages": MESSAGES}, NOT_ASSISTANT),
        ({"messages": [*MESSAGES, {"role": "assistant", "content": None}]}, NO_CONTENT),
        ({"continue_final_message": "yes"}, "'continue_final_message' must be a boolean."),
    ],
    ids=["both-true", "generation-prompt-by-default", "last-not-assistant", "no-content", "not-a-boolean"],
)
def test_continuations_vllm_refuses_are_400(sim: RunningSim, change: dict[str, Any], message: str) -> None:
    body = {**continuation("The", 10), **change}
    body = {key: value for key, value in body.items() if value is not None}
    for streamed in (False, True):
        reply = complete(sim, {**body, "stream": streamed})
        assert reply.status_code == 400
        error = reply.json()["error"]
        assert error["message"] == message
        assert error["type"] == "BadRequestError" and error["code"] == 400


def test_vllm_messages_are_mirrored_verbatim() -> None:
    assert BOTH_FLAGS == "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
    assert NOT_ASSISTANT == (
        "Cannot set `continue_final_message` to True when the last message is not from the assistant."
    )


@pytest.mark.parametrize("k", [1, 5, 31])
def test_close_after_ends_the_stream_cleanly_without_done_or_a_finish_reason(
    start_sim: StartSim, k: int
) -> None:
    sim = start_sim(SimConfig(knobs=Knobs(output_tokens=TOKENS, close_after=k + 1)))
    cut = stream(sim, {"messages": MESSAGES})
    assert cut.status == 200
    assert cut.broken is None, "a clean close is no transport error"
    assert not cut.done and cut.finish_reasons == []
    assert len(cut.contents) == k
    assert sim.wait_for_metric("vllm:num_requests_running", 0) == 0
    assert sim.engine.finished["abort"] == 1


def test_close_after_on_a_whole_answer_cuts_its_body_cleanly(start_sim: StartSim) -> None:
    sim = start_sim(SimConfig(knobs=Knobs(close_after=0)))
    reply = complete(sim, {"messages": MESSAGES})
    assert reply.status_code == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(reply.content)


def test_close_and_reset_work_per_request_too(sim: RunningSim) -> None:
    cut = stream(sim, {"messages": MESSAGES, "sim": {"close_after": 3}})
    assert cut.broken is None and not cut.done and len(cut.contents) == 2
    reset = stream(sim, {"messages": MESSAGES, "sim": {"reset_after": 3}})
    assert reset.broken is not None and len(reset.contents) == 2


def test_a_stall_after_k_tokens_then_a_continuation_elsewhere(start_sim: StartSim) -> None:
    k = 5
    stalled = start_sim(SimConfig(knobs=Knobs(output_tokens=TOKENS, stall_after=k + 1, stall_s=30)))
    healthy = start_sim(SimConfig(knobs=Knobs(output_tokens=TOKENS)))
    payload = {"model": "sim", "messages": MESSAGES, "stream": True}
    contents: list[str] = []
    with (
        httpx.Client(timeout=httpx.Timeout(10, read=0.5)) as client,
        client.stream("POST", stalled.base_url + "/v1/chat/completions", json=payload) as reply,
        pytest.raises(httpx.ReadTimeout),
    ):
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                delta = orjson.loads(line[6:])["choices"][0]["delta"]
                if "role" not in delta:
                    contents.append(delta["content"])
    assert len(contents) == k
    assert stalled.wait_for_metric("vllm:num_requests_running", 0) == 0  # the client left
    whole = stream(healthy, {"messages": MESSAGES})
    rest = stream(healthy, continuation("".join(contents), 100))
    assert "".join(contents) + rest.text == whole.text
    assert k + rest.usage["completion_tokens"] == TOKENS


def test_fault_scope_original_breaks_originals_and_serves_continuations(start_sim: StartSim) -> None:
    # both replicas alike: whichever gets the original breaks it, and either serves the continuation
    config = SimConfig(knobs=Knobs(output_tokens=TOKENS, reset_after=6, fault_scope="original"))
    one, other = start_sim(config), start_sim(config)
    unbroken = stream(start_sim(SimConfig(knobs=Knobs(output_tokens=TOKENS))), {"messages": MESSAGES})
    first = stream(one, {"messages": MESSAGES})
    assert first.broken is not None and len(first.contents) == 5
    for replica in (one, other):
        rest = stream(replica, continuation(first.text, 100))
        assert rest.done and rest.broken is None
        assert len(rest.contents) == TOKENS - 5
        assert first.text + rest.text == unbroken.text


def test_fault_scope_continuation_breaks_only_continuations(start_sim: StartSim) -> None:
    sim = start_sim(SimConfig(knobs=Knobs(output_tokens=TOKENS, close_after=3, fault_scope="continuation")))
    whole = stream(sim, {"messages": MESSAGES})
    assert whole.done and len(whole.contents) == TOKENS
    rest = stream(sim, continuation("".join(whole.contents[:4]), 100))
    assert not rest.done and rest.broken is None and len(rest.contents) == 2
    assert whole.text.startswith("".join(whole.contents[:4]) + rest.text)


def test_cli_flags_set_close_after_and_fault_scope() -> None:
    config, _ = parse_args(["--close-after", "4", "--fault-scope", "original", "--reset-after", "none"])
    assert (config.knobs.close_after, config.knobs.fault_scope, config.knobs.reset_after) == (
        4,
        "original",
        None,
    )
    with pytest.raises(SystemExit):
        parse_args(["--fault-scope", "sometimes"])


def test_a_bad_fault_scope_header_is_a_400_naming_the_knob(sim: RunningSim) -> None:
    reply = httpx.post(
        sim.base_url + "/v1/chat/completions",
        headers={"X-Sim-Fault-Scope": "sometimes"},
        json={"model": "sim", "messages": MESSAGES},
    )
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "fault_scope"


def test_prefix_matching_in_process() -> None:
    answer = Answer(conversation_key(MESSAGES))
    assert answer.text(0, 10) == answer.text(0, 4) + answer.text(4, 10)
    text = answer.text(0, 7)
    assert match_prefix(answer, text).match == "exact" and match_prefix(answer, text).position == 7
    assert match_prefix(answer, text).prompt_tokens == 7
    assert match_prefix(answer, "").position == 0
    # the key ignores everything but role and text (and the seed)
    assert conversation_key([{**MESSAGES[0], "name": None}, MESSAGES[1]]) == conversation_key(MESSAGES)
    assert conversation_key(MESSAGES, seed=3) != conversation_key(MESSAGES)
