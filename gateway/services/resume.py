"""Resuming a stream whose engine broke mid-answer on another replica of the same version.

The gateway has seen every token it relayed, and vLLM can continue an assistant message that was cut
off (``continue_final_message: true`` with ``add_generation_prompt: false``). So when a stream breaks
after its first byte (the engine's connection resets, it closes without ``[DONE]``, or it is silent
past the stream idle timeout), the request is sent again to another healthy replica of the same
version: the original messages plus an assistant message holding exactly the text relayed so far,
``max_tokens`` reduced by the tokens already sent, everything else unchanged. The client's stream
goes on as one: same ``id`` and ``created`` in every chunk, no second role chunk, one
``finish_reason``, and usage that adds up what the client was given.

Only where the continuation can be exact: one choice (``n`` 1), no logprobs, no tool call under way,
no ``continue_final_message`` of the client's own, and a version configured to (``resume``; on by
default with two replicas or more). At most ``max_resumes`` per stream, within the request's deadline.
Otherwise the stream ends as it always did: an in-band error and ``[DONE]``.

Tokens already sent are counted as the content chunks relayed (vLLM sends one per generated token);
the usage reported after a resume is the continuation's, with those tokens moved from its prompt
(where the engine counted the relayed text) back to the completion.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import EngineUnavailableError, GatewayError
from gateway.metrics import Metrics
from gateway.protocol import paths
from gateway.record import RequestRecord
from gateway.routing.router import Router
from gateway.routing.table import Replica, Route, Version
from gateway.services.leases import Leases
from gateway.upstream import EventStream, Upstream

_LIMITS = ("max_tokens", "max_completion_tokens")


def resumable(data: dict[str, Any]) -> bool:
    """Whether a request's answer could be continued exactly elsewhere (its fields only)."""
    return (
        data.get("n") in (None, 1)
        and not data.get("logprobs")
        and not data.get("top_logprobs")
        and not data.get("continue_final_message")
        and not data.get("echo")
    )


@dataclass(slots=True)
class Splice:
    """What a stream has given its client so far, to continue it elsewhere when its engine breaks."""

    pieces: list[str] = field(default_factory=list)
    tokens: int = 0
    """Content chunks relayed (a token each)."""
    id: Any = None
    created: Any = None
    exact: bool = True
    """False once something was relayed that a continuation could not reproduce (a tool call)."""
    resumes: int = 0
    carried: int = 0
    """Tokens relayed before the last resume: the engine now counts them as prompt."""
    broke_at: float | None = None
    """When the last break happened, until the next token arrives (for the gap metric)."""

    def note(self, event: dict[str, Any], choice: dict[str, Any]) -> None:
        """A chunk relayed to the client."""
        if self.id is None:
            self.id, self.created = event.get("id"), event.get("created")
        delta = choice.get("delta")
        if delta:
            content = delta.get("content")
            if content:
                self.pieces.append(content)
                self.tokens += 1
            if delta.get("tool_calls"):
                self.exact = False
        if choice.get("logprobs"):
            self.exact = False

    def adopt(self, event: dict[str, Any], choices: list[dict[str, Any]]) -> bool:
        """Make a continuation's chunk part of the first stream (its id, no second role); False
        for a chunk that carries nothing else and is dropped."""
        event["id"], event["created"] = self.id, self.created
        for choice in choices:
            delta = choice.get("delta")
            if delta and "role" in delta:
                del delta["role"]
                if not any(delta.values()) and choice.get("finish_reason") is None:
                    return False
        return True

    def usage(self, event: dict[str, Any], usage: dict[str, Any]) -> dict[str, Any]:
        """Make a continuation's usage chunk the client's (the first stream's id; the relayed tokens
        moved from prompt, where the engine counted them, back to completion)."""
        event["id"], event["created"] = self.id, self.created
        prompt = max(0, (usage.get("prompt_tokens") or 0) - self.carried)
        completion = (usage.get("completion_tokens") or 0) + self.carried
        return {
            **usage,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def continuation(self, data: dict[str, Any], served_name: str) -> bytes | None:
        """The request that continues the answer, or None when nothing is left to generate."""
        body = {
            **data,
            "model": served_name,
            "messages": [*data["messages"], {"role": "assistant", "content": "".join(self.pieces)}],
            "continue_final_message": True,
            "add_generation_prompt": False,
        }
        for name in (*_LIMITS, "min_tokens"):
            limit = data.get(name)
            if isinstance(limit, int):
                left = limit - self.tokens
                if left <= 0 and name != "min_tokens":
                    return None  # the break came after the last token: nothing to continue
                body[name] = max(0, left)
        return orjson.dumps(body)


class Resumer:
    """Opens the continuation of a broken stream on another replica of its version."""

    def __init__(
        self,
        router: Router,
        upstream: Upstream,
        leases: Leases,
        metrics: Metrics,
        max_resumes: int,
        deadline: float,
    ) -> None:
        self._router = router
        self._upstream = upstream
        self._leases = leases
        self._metrics = metrics
        self._max_resumes = max_resumes
        self._deadline = deadline

    def applies(self, version: Version, data: dict[str, Any]) -> Splice | None:
        """A splice to keep for a new stream of ``version``, or None when it would not be resumed."""
        if not version.resume or self._max_resumes <= 0 or not resumable(data):
            return None
        return Splice()

    async def reopen(
        self,
        route: Route,
        version: Version,
        record: RequestRecord,
        data: dict[str, Any],
        splice: Splice,
        broken: set[str],
    ) -> tuple[EventStream, Replica] | None:
        """The continuation's engine stream and replica, or None (and why, counted) when the stream
        cannot be resumed: inexact, out of resumes or time, no other replica, the engine refused."""
        splice.broke_at = time.perf_counter()
        outcome = self._refusal(splice, record)
        if outcome is None:
            try:
                pick = self._router.choose(route, version, frozenset(broken))
            except EngineUnavailableError:
                pick = None
            if pick is None or pick.version is not version:  # (a fallback version is another model)
                outcome = "no_replica"
            else:
                body = splice.continuation(data, pick.replica.served_name)
                if body is None:
                    outcome = "nothing_left"
                else:
                    splice.resumes += 1
                    record.resumes += 1
                    opened = await self._open(pick.replica, body)
                    if opened is not None:
                        splice.carried = splice.tokens
                        self._count(route, version, "resumed")
                        return opened, pick.replica
                    broken.add(pick.replica.id)
                    outcome = "refused"
        self._count(route, version, outcome)
        return None

    def _refusal(self, splice: Splice, record: RequestRecord) -> str | None:
        if not splice.exact:
            return "not_exact"
        if splice.resumes >= self._max_resumes:
            return "out_of_resumes"
        if time.perf_counter() >= record.started + self._deadline:
            return "out_of_time"
        return None

    async def _open(self, replica: Replica, body: bytes) -> EventStream | None:
        try:
            with self._leases.calling(replica):  # (its outcome goes to the replica's breaker)
                opened = await self._upstream.open_stream(replica.base_url, paths.CHAT_COMPLETIONS, body)
        except GatewayError:
            return None
        return opened if isinstance(opened, EventStream) else None  # (e.g. a 400: cannot continue)

    def resumed(self, route: Route, version: Version, splice: Splice) -> None:
        """The first token after a resume arrived: the gap the client saw."""
        if splice.broke_at is not None:
            gap = time.perf_counter() - splice.broke_at
            self._metrics.resume_gap.labels(route.model, version.label).observe(gap)
            splice.broke_at = None

    def _count(self, route: Route, version: Version, outcome: str) -> None:
        self._metrics.resumes.labels(route.model, version.label, outcome).inc()
