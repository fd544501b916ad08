"""``POST /v1/chat/completions``: simulated generation, streamed (SSE) or whole, in vLLM's shape.

The text is the request's deterministic token sequence (:mod:`engines.sim.answer`). A request with
``continue_final_message: true`` and ``add_generation_prompt: false`` continues its final assistant
message, as vLLM does: generation resumes where that text ends in the sequence, the prefix counts as
prompt tokens, the answer holds only the new text, and the first event still carries
``role: assistant``. Such answers carry ``X-Sim-Continue-Match`` (``exact``, ``partial`` or
``mismatch``) and ``X-Sim-Continue-Position`` (the token the continuation starts at).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Send

from engines.sim.answer import TOKEN_CODES, Answer, Resume, content_text, conversation_key, match_prefix
from engines.sim.chunks import DONE, ChunkEncoder
from engines.sim.config import Knobs, SimConfig
from engines.sim.engine import FINISH_ABORT, FINISH_LENGTH, FINISH_STOP, SimEngine
from engines.sim.errors import SimError, error_response
from engines.sim.faults import BrokenAnswer, has_stream_faults, inject, unless_disconnected
from engines.sim.intake import positive_int, take_in

_SSE_HEADERS = {"Cache-Control": "no-cache"}

# vLLM's answers (its request validator, transformers' chat template, its Mistral tokenizer check).
BOTH_FLAGS = "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
DEFAULT_GENERATION_PROMPT = (
    "continue_final_message and add_generation_prompt are not compatible. Use continue_final_message when "
    "you want the model to continue the final message, and add_generation_prompt when you want to add a "
    "header that will prompt it to start a new assistant message instead."
)
NOT_ASSISTANT = "Cannot set `continue_final_message` to True when the last message is not from the assistant."
NO_CONTENT = 'continue_final_message is set but the final message has no "content" to continue!'


class _EventStream(EventSourceResponse):
    """sse-starlette's response without its per-event timeout scope (we never set a send timeout):
    at thousands of events/s that scope was a fifth of the simulator's CPU time."""

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)


@dataclass(frozen=True, slots=True)
class Plan:
    """What one request will generate."""

    request_id: str
    created: int
    model: str
    choices: int
    prompt_tokens: int
    completion_tokens: int
    """Per choice."""
    finish_reason: str
    include_usage: bool
    knobs: Knobs
    answer: Answer
    resume: Resume | None = None
    """Set for a continuation: generation starts at ``resume.position`` (with ``resume.head``)."""
    prompt: str = ""
    """The prompt as the prefix cache sees it (every message, the final one included)."""

    @property
    def start(self) -> int:
        return 0 if self.resume is None else self.resume.position

    @property
    def head(self) -> str:
        return "" if self.resume is None else self.resume.head

    def text(self) -> str:
        """The generated text of one choice."""
        count = self.completion_tokens
        if count == 0:
            return ""
        start = self.start
        return (self.head or self.answer.token(start)) + self.answer.text(start + 1, start + count)

    def headers(self) -> dict[str, str]:
        if self.resume is None:
            return {}
        return {
            "X-Sim-Continue-Match": self.resume.match,
            "X-Sim-Continue-Position": str(self.resume.position),
        }


class ChatHandler:
    """The chat endpoint of one simulated engine."""

    def __init__(self, config: SimConfig, engine: SimEngine, rng: random.Random) -> None:
        self._config = config
        self._engine = engine
        self._rng = rng

    async def handle(self, request: Request) -> Response:
        try:
            intake = await take_in(request, self._config, self._rng)
            plan = self._plan(intake.body, intake.model, intake.knobs)
        except SimError as exc:
            return error_response(exc)
        if plan.resume is not None:
            self._engine.continued[plan.resume.match] += 1
        headers = plan.headers()
        if intake.body.get("stream") is True:
            events = self._events(plan)
            if has_stream_faults(plan.knobs):
                events = inject(events, plan.knobs)
            return _EventStream(events, ping=0, headers={**_SSE_HEADERS, **headers})
        answer = await unless_disconnected(request, self._complete(plan))
        if answer is None:
            return Response(status_code=499)  # the client left; nobody reads this
        if isinstance(answer, Response):
            return answer
        return Response(answer, media_type="application/json", headers=headers)

    def _plan(self, body: dict[str, Any], model: str, knobs: Knobs) -> Plan:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise SimError("'messages' must be a non-empty list.", param="messages")
        continuing = _flag(body, "continue_final_message")
        generation_prompt = _flag(body, "add_generation_prompt")
        prefix: str | None = None
        if continuing:
            if generation_prompt:
                raise SimError(BOTH_FLAGS)
            if generation_prompt is None:  # vLLM's default is true: the chat template refuses
                raise SimError(DEFAULT_GENERATION_PROMPT)
            last = messages[-1]
            if not isinstance(last, dict) or last.get("role") != "assistant":
                raise SimError(NOT_ASSISTANT, param="messages")
            prefix = content_text(last)
            if prefix is None:
                raise SimError(NO_CONTENT, param="messages")
            conversation = messages[:-1]
        else:
            conversation = messages
        prompt_tokens = sum(_message_tokens(m) for m in conversation)
        answer = Answer(conversation_key(conversation, body.get("seed")))
        resume = None if prefix is None else match_prefix(answer, prefix)
        start = 0
        if resume is not None:
            prompt_tokens += resume.prompt_tokens
            start = resume.position
        if _faults_spared(knobs, continuing=resume is not None):
            knobs = dataclasses.replace(knobs, stall_after=None, reset_after=None, close_after=None)
        choices = positive_int(body, "n", 1) or 1
        limit = positive_int(body, "max_completion_tokens") or positive_int(body, "max_tokens")
        room = self._config.max_model_len - prompt_tokens
        if (limit is not None and limit > room) or room < 1:
            raise SimError(
                f"This model's maximum context length is {self._config.max_model_len} tokens. However, "
                f"you requested {prompt_tokens + (limit or 1)} tokens ({prompt_tokens} in the messages, "
                f"{limit or 1} in the completion). Please reduce the length of the messages or completion.",
                param="max_tokens",
            )
        limit = room if limit is None else limit
        natural = knobs.output_tokens - start  # a continuation stops where the whole answer would
        if body.get("ignore_eos") is True or natural >= limit:
            tokens, finish = limit, FINISH_LENGTH
        else:
            tokens, finish = max(0, natural), FINISH_STOP
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return Plan(
            f"chatcmpl-{uuid.uuid4().hex}",
            int(time.time()),
            model,
            choices,
            prompt_tokens,
            tokens,
            finish,
            include_usage,
            knobs,
            answer,
            resume,
            _prompt_text(messages) if self._engine.prefix_cache is not None else "",  # off: no cost
        )

    async def _occupy(self, plan: Plan) -> tuple[int, float]:
        """Wait for a running slot and take the prompt's KV tokens; returns the tokens held and the
        time to the first token (shorter by the share of the prompt the prefix cache holds)."""
        engine = self._engine
        await engine.admit()
        held = plan.prompt_tokens * plan.choices
        engine.kv_tokens += held
        engine.prompt_tokens_total += plan.prompt_tokens
        ttft = plan.knobs.ttft
        if engine.prefix_cache is not None:  # looked up when scheduled, as vLLM does
            ttft *= 1.0 - engine.prefix_cache.lookup(plan.prompt, plan.prompt_tokens).share
        return held, ttft

    async def _events(self, plan: Plan) -> AsyncIterator[bytes]:
        """The SSE events of one streamed answer; holds a running slot while generating."""
        engine = self._engine
        held, ttft = await self._occupy(plan)
        generated = 0
        finish = FINISH_ABORT
        try:
            knobs = plan.knobs
            if ttft > 0:
                await asyncio.sleep(ttft)
            encoder = ChunkEncoder(plan.request_id, plan.created, plan.model, plan.choices)
            choices = range(plan.choices)
            for choice in choices:
                yield encoder.role(choice)
            head = plan.head
            start = plan.start
            codes = plan.answer.codes(start + plan.completion_tokens)
            last = plan.completion_tokens - 1
            if last < 0:  # a continuation of an answer that had already ended
                for choice in choices:
                    yield encoder.last(choice, "", plan.finish_reason)
            for step in range(plan.completion_tokens):
                if step and knobs.itl > 0:
                    await asyncio.sleep(knobs.itl)
                code = codes[start + step]
                if step == last:
                    text = head if step == 0 and head else TOKEN_CODES[code]
                    for choice in choices:
                        yield encoder.last(choice, text, plan.finish_reason)
                elif step == 0 and head:
                    for choice in choices:
                        yield encoder.piece(choice, head)
                else:
                    for choice in choices:
                        yield encoder.token(choice, code)
                generated += plan.choices
                engine.kv_tokens += plan.choices
                held += plan.choices
            finish = plan.finish_reason
            if plan.include_usage:
                yield encoder.usage(plan.prompt_tokens, generated)
            yield DONE
        finally:
            engine.release(held, generated, finish)

    async def _complete(self, plan: Plan) -> bytes | Response:
        """A whole answer after the simulated generation time."""
        engine = self._engine
        held, ttft = await self._occupy(plan)
        generated = 0
        finish = FINISH_ABORT
        try:
            knobs = plan.knobs
            delay = ttft + knobs.itl * max(0, plan.completion_tokens - 1)
            if knobs.stall_after is not None:
                delay += knobs.stall_s
            if delay > 0:
                await asyncio.sleep(delay)
            if knobs.reset_after is not None:
                return BrokenAnswer(reset=True)
            if knobs.close_after is not None:
                return BrokenAnswer(reset=False)
            generated = plan.completion_tokens * plan.choices
            finish = plan.finish_reason
            return orjson.dumps(_completion(plan))
        finally:
            engine.release(held, generated, finish)


def _completion(plan: Plan) -> dict[str, Any]:
    text = plan.text()
    choices: list[dict[str, Any]] = [
        {
            "index": i,
            "message": {
                "role": "assistant",
                "content": text,
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "tool_calls": [],
                "reasoning_content": None,
            },
            "logprobs": None,
            "finish_reason": plan.finish_reason,
            "stop_reason": None,
        }
        for i in range(plan.choices)
    ]
    completion = plan.completion_tokens * plan.choices
    return {
        "id": plan.request_id,
        "object": "chat.completion",
        "created": plan.created,
        "model": plan.model,
        "choices": choices,
        "service_tier": None,
        "system_fingerprint": None,
        "usage": {
            "prompt_tokens": plan.prompt_tokens,
            "total_tokens": plan.prompt_tokens + completion,
            "completion_tokens": completion,
            "prompt_tokens_details": None,
        },
        "prompt_logprobs": None,
        "kv_transfer_params": None,
    }


def _flag(body: dict[str, Any], name: str) -> bool | None:
    """An optional boolean field (None when absent)."""
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise SimError(f"'{name}' must be a boolean.", param=name)


def _faults_spared(knobs: Knobs, *, continuing: bool) -> bool:
    """Whether ``fault_scope`` keeps this request clear of the stream faults."""
    scope = knobs.fault_scope
    return (scope == "original" and continuing) or (scope == "continuation" and not continuing)


def _prompt_text(messages: list[Any]) -> str:
    """The messages laid out as a chat template would: role, text, separator."""
    return "".join(f"{m.get('role')}\n{content_text(m) or ''}\n" for m in messages if isinstance(m, dict))


def _message_tokens(message: Any) -> int:
    """A rough token count of one message (4 characters a token, plus the chat template's few)."""
    if not isinstance(message, dict):
        raise SimError("Each message must be an object.", param="messages")
    content = content_text(message) or ""
    return 4 + (len(content) + 3) // 4
