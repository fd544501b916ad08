"""``POST /v1/chat/completions``: simulated generation, streamed (SSE) or whole, in vLLM's shape."""

from __future__ import annotations

import asyncio
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

from engines.sim.chunks import DONE, ChunkEncoder, text_of
from engines.sim.config import Knobs, SimConfig
from engines.sim.engine import FINISH_ABORT, FINISH_LENGTH, FINISH_STOP, SimEngine
from engines.sim.errors import SimError, error_response
from engines.sim.faults import ResetResponse, has_stream_faults, inject, unless_disconnected
from engines.sim.intake import positive_int, take_in

_SSE_HEADERS = {"Cache-Control": "no-cache"}


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
        if intake.body.get("stream") is True:
            events = self._events(plan)
            if has_stream_faults(plan.knobs):
                events = inject(events, plan.knobs)
            return _EventStream(events, ping=0, headers=_SSE_HEADERS)
        answer = await unless_disconnected(request, self._complete(plan))
        if answer is None:
            return Response(status_code=499)  # the client left; nobody reads this
        if isinstance(answer, Response):
            return answer
        return Response(answer, media_type="application/json")

    def _plan(self, body: dict[str, Any], model: str, knobs: Knobs) -> Plan:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise SimError("'messages' must be a non-empty list.", param="messages")
        prompt_tokens = sum(_message_tokens(m) for m in messages)
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
        if body.get("ignore_eos") is True or knobs.output_tokens >= limit:
            tokens, finish = limit, FINISH_LENGTH
        else:
            tokens, finish = knobs.output_tokens, FINISH_STOP
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
        )

    async def _occupy(self, plan: Plan) -> int:
        """Wait for a running slot and take the prompt's KV tokens; returns the tokens held."""
        engine = self._engine
        await engine.admit()
        held = plan.prompt_tokens * plan.choices
        engine.kv_tokens += held
        engine.prompt_tokens_total += plan.prompt_tokens
        return held

    async def _events(self, plan: Plan) -> AsyncIterator[bytes]:
        """The SSE events of one streamed answer; holds a running slot while generating."""
        engine = self._engine
        held = await self._occupy(plan)
        generated = 0
        finish = FINISH_ABORT
        try:
            knobs = plan.knobs
            if knobs.ttft > 0:
                await asyncio.sleep(knobs.ttft)
            encoder = ChunkEncoder(plan.request_id, plan.created, plan.model, plan.choices)
            choices = range(plan.choices)
            for choice in choices:
                yield encoder.role(choice)
            last = plan.completion_tokens - 1
            for position in range(plan.completion_tokens):
                if position and knobs.itl > 0:
                    await asyncio.sleep(knobs.itl)
                for choice in choices:
                    if position == last:
                        yield encoder.last(choice, position, plan.finish_reason)
                    else:
                        yield encoder.token(choice, position)
                generated += plan.choices
                engine.kv_tokens += plan.choices
                held += plan.choices
            finish = plan.finish_reason
            if plan.include_usage:
                yield encoder.usage(plan.prompt_tokens, generated)
            yield DONE
        finally:
            engine.release(held, generated, finish)

    async def _complete(self, plan: Plan) -> bytes | ResetResponse:
        """A whole answer after the simulated generation time."""
        engine = self._engine
        held = await self._occupy(plan)
        generated = 0
        finish = FINISH_ABORT
        try:
            knobs = plan.knobs
            delay = knobs.ttft + knobs.itl * (plan.completion_tokens - 1)
            if knobs.stall_after is not None:
                delay += knobs.stall_s
            if delay > 0:
                await asyncio.sleep(delay)
            if knobs.reset_after is not None:
                return ResetResponse()
            generated = plan.completion_tokens * plan.choices
            finish = plan.finish_reason
            return orjson.dumps(_completion(plan))
        finally:
            engine.release(held, generated, finish)


def _completion(plan: Plan) -> dict[str, Any]:
    text = text_of(plan.completion_tokens)
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


def _message_tokens(message: Any) -> int:
    """A rough token count of one message (4 characters a token, plus the chat template's few)."""
    if not isinstance(message, dict):
        raise SimError("Each message must be an object.", param="messages")
    content = message.get("content")
    if isinstance(content, list):
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    elif not isinstance(content, str):
        content = ""
    return 4 + (len(content) + 3) // 4
