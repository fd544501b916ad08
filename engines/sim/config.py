"""Simulator settings: per-instance :class:`SimConfig` and the per-request :class:`Knobs`.

Every knob has an instance default (CLI flag or ``SimConfig.knobs``) that one request may override
with a header ``X-Sim-<Knob-Name>`` (``X-Sim-TTFT: 0.2``, ``X-Sim-Output-Tokens: 64``) or an extra
body field ``"sim": {"ttft": 0.2, "output_tokens": 64}``. The body wins over headers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

HEADER_PREFIX = b"x-sim-"


FaultScope = Literal["all", "original", "continuation"]
FAULT_SCOPES: tuple[FaultScope, ...] = ("all", "original", "continuation")


@dataclass(frozen=True, slots=True)
class Knobs:
    """Behaviour of one request. Times are in seconds; "events" are SSE ``data:`` events: the role
    event of each choice, then token events, the usage event if asked for and ``[DONE]``. With one
    choice, a fault "after K tokens" is a fault after K + 1 events.

    Several stream faults at the same event: the stall comes first, then the reset or (if no reset)
    the clean close.
    """

    ttft: float = 0.0
    """Delay before the first token (for embeddings: before the answer)."""
    itl: float = 0.0
    """Delay between two tokens."""
    output_tokens: int = 16
    """Tokens generated before a natural ``stop`` (capped by ``max_tokens``; exact with ``ignore_eos``)."""
    error_rate: float = 0.0
    """Probability that the request fails up front with ``error_status``."""
    error_status: int = 500
    stall_after: int | None = None
    """Go silent (connection open) after this many events, for ``stall_s`` seconds. A non-streaming
    answer comes ``stall_s`` later."""
    stall_s: float = 300.0
    reset_after: int | None = None
    """Drop the connection after this many events (0: right after the headers). A non-streaming answer
    starts, then the connection drops."""
    close_after: int | None = None
    """End the stream cleanly after this many events, never sending ``[DONE]`` (nor the finish reason
    when it comes before the last token; 0: right after the headers). A non-streaming chat answer is a
    200 whose JSON body ends early, cleanly (embeddings ignore it)."""
    fault_scope: FaultScope = "all"
    """Which requests the stream faults above (stall, reset, close) hit: ``all``, ``original`` (not
    continuations: requests with ``continue_final_message``) or ``continuation`` (only those)."""
    health_delay: float = 0.0
    """Delay before ``GET /health`` answers."""


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulated engine instance."""

    model: str = "sim"
    aliases: tuple[str, ...] = ()
    """More served names (like vLLM's ``--served-model-name A B``); the first name labels metrics."""
    max_running: int = 0
    """Requests generating at once; more wait (``vllm:num_requests_waiting``). 0: no limit."""
    embedding_dims: int = 384
    max_model_len: int = 4096
    kv_cache_tokens: int = 65536
    """Simulated KV cache size; ``vllm:kv_cache_usage_perc`` is tokens held / this."""
    prefix_cache_tokens: int = 0
    """Prefix cache size in tokens (0: off, the default): an LRU of prompt blocks
    (:mod:`engines.sim.prefix_cache`). A chat request whose leading blocks are cached waits
    ``ttft * (1 - cached share of its prompt)`` for its first token; hits and queries are counted in
    ``vllm:prefix_cache_hits_total`` and ``vllm:prefix_cache_queries_total``."""
    prefix_block_tokens: int = 16
    """Tokens per prefix-cache block (vLLM's GPU default is 16, its CPU default 128): only whole
    blocks hit."""
    seed: int | None = None
    """Seed of the error-rate dice (None: unseeded)."""
    knobs: Knobs = field(default_factory=Knobs)

    @property
    def served_names(self) -> tuple[str, ...]:
        return (self.model, *self.aliases)


class KnobError(ValueError):
    """A knob value that makes no sense; answered with 400."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def _seconds(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0 or number > 86400:
        raise ValueError("must be a number of seconds between 0 and 86400")
    return number


def _count(value: Any) -> int:
    number = _integer(value)
    if number < 1:
        raise ValueError("must be an integer >= 1")
    return number


def _optional_events(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "off")):
        return None
    number = _integer(value)
    if number < 0:
        raise ValueError("must be an integer >= 0, or none")
    return number


def _fault_scope(value: Any) -> FaultScope:
    text = str(value).strip().lower()
    for scope in FAULT_SCOPES:
        if text == scope:
            return scope
    raise ValueError(f"must be one of {', '.join(FAULT_SCOPES)}")


def _probability(value: Any) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError("must be between 0 and 1")
    return number


def _status(value: Any) -> int:
    number = _integer(value)
    if not 400 <= number <= 599:
        raise ValueError("must be an HTTP error status (400-599)")
    return number


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be an integer")
        return int(value)
    return int(value)


PARSERS: Mapping[str, Callable[[Any], Any]] = {
    "ttft": _seconds,
    "itl": _seconds,
    "output_tokens": _count,
    "error_rate": _probability,
    "error_status": _status,
    "stall_after": _optional_events,
    "stall_s": _seconds,
    "reset_after": _optional_events,
    "close_after": _optional_events,
    "fault_scope": _fault_scope,
    "health_delay": _seconds,
}
"""Knob name -> parser of one value (raises ValueError/TypeError); shared by the CLI and requests."""


def parse_knob(name: str, value: Any) -> Any:
    """One knob value, validated; :class:`KnobError` names the knob on failure."""
    parser = PARSERS.get(name)
    if parser is None:
        raise KnobError(name, f"Unknown simulator knob {name!r}; known: {', '.join(PARSERS)}.")
    try:
        return parser(value)
    except (TypeError, ValueError) as exc:
        raise KnobError(name, f"Simulator knob {name!r}: {exc}.") from None


def resolve(base: Knobs, raw_headers: Iterable[tuple[bytes, bytes]], body_sim: Any = None) -> Knobs:
    """``base`` with this request's ``X-Sim-*`` headers, then its body ``sim`` object, applied."""
    changes: dict[str, Any] = {}
    for key, value in raw_headers:
        if key.startswith(HEADER_PREFIX):
            name = key[len(HEADER_PREFIX) :].decode("latin-1").lower().replace("-", "_")
            changes[name] = parse_knob(name, value.decode("latin-1").strip())
    if body_sim is not None:
        if not isinstance(body_sim, dict):
            raise KnobError("sim", "The 'sim' field must be an object of simulator knobs.")
        for name, value in body_sim.items():
            changes[name] = parse_knob(str(name), value)
    return dataclasses.replace(base, **changes) if changes else base
