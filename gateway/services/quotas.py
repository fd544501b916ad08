"""Per-key limits, counted in this process: requests and tokens per window (``rpm``, ``tpm``) and
requests in flight (``max_concurrent``).

Sliding windows: each admitted request's time, and each finished request's tokens, are kept for one
window (``limits.window_seconds``, a minute by default) in a deque per key, so a key may spend its
whole allowance at any moment but never more within any window. Tokens are counted from the engine's
usage when a request ends (the gateway asks streams for it), so a request is admitted while the key
is under its ``tpm`` and its own tokens count against what follows.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

from gateway.config import OffloadConfig
from gateway.errors import RateLimitError
from gateway.keys import Principal


@dataclass(slots=True)
class _Usage:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0
    in_flight: int = 0


class Quotas:
    """The per-key counters; ``window`` seconds per rpm/tpm window."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self._usage: dict[str, _Usage] = {}

    async def rebuild(self, config: OffloadConfig) -> None:
        """A reloaded configuration's window; counts carry over (keys are known by name)."""
        self.window = config.limits.window_seconds

    def _current(self, key: str, now: float) -> _Usage:
        usage = self._usage.get(key)
        if usage is None:
            usage = self._usage[key] = _Usage()
        since = now - self.window
        while usage.requests and usage.requests[0] <= since:
            usage.requests.popleft()
        while usage.tokens and usage.tokens[0][0] <= since:
            usage.token_sum -= usage.tokens.popleft()[1]
        return usage

    def admit(self, principal: Principal, now: float | None = None) -> list[tuple[bytes, bytes]]:
        """Count a request of ``principal`` in, or raise :class:`RateLimitError` (with the wait);
        the key's x-ratelimit headers."""
        now = time.monotonic() if now is None else now
        usage = self._current(principal.name, now)
        error = None
        if principal.max_concurrent is not None and usage.in_flight >= principal.max_concurrent:
            error = limited(f"at most {principal.max_concurrent} requests in flight", 1.0)
        elif principal.rpm is not None and len(usage.requests) >= principal.rpm:
            wait = usage.requests[0] + self.window - now
            error = limited(f"{principal.rpm} requests per {self.window:g} s", wait)
        elif principal.tpm is not None and usage.token_sum >= principal.tpm:
            wait = usage.tokens[0][0] + self.window - now
            error = limited(f"{principal.tpm} tokens per {self.window:g} s", wait)
        if error is not None:
            error.rate_headers = tuple(self._headers(principal, usage, now))
            raise error
        if principal.rpm is not None:  # (only what a limit needs is kept)
            usage.requests.append(now)
        usage.in_flight += 1
        return self._headers(principal, usage, now)

    def release(self, principal: Principal, tokens: int, now: float | None = None) -> None:
        """A request admitted by :meth:`admit` ended, having used ``tokens`` (prompt + completion)."""
        now = time.monotonic() if now is None else now
        usage = self._current(principal.name, now)
        usage.in_flight = max(0, usage.in_flight - 1)
        if tokens > 0:
            usage.tokens.append((now, tokens))
            usage.token_sum += tokens

    def headers(self, principal: Principal, now: float | None = None) -> list[tuple[bytes, bytes]]:
        """OpenAI's ``x-ratelimit-*`` response headers for the key's request and token limits."""
        now = time.monotonic() if now is None else now
        return self._headers(principal, self._current(principal.name, now), now)

    def _headers(self, principal: Principal, usage: _Usage, now: float) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        if principal.rpm is not None:
            reset = usage.requests[0] + self.window - now if usage.requests else 0.0
            out += ratelimit_headers("requests", principal.rpm, principal.rpm - len(usage.requests), reset)
        if principal.tpm is not None:
            reset = usage.tokens[0][0] + self.window - now if usage.tokens else 0.0
            out += ratelimit_headers("tokens", principal.tpm, principal.tpm - usage.token_sum, reset)
        return out


def ratelimit_headers(kind: str, limit: int, remaining: int, reset: float) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-ratelimit-limit-" + kind.encode(), str(limit).encode()),
        (b"x-ratelimit-remaining-" + kind.encode(), str(max(0, remaining)).encode()),
        (b"x-ratelimit-reset-" + kind.encode(), duration(max(0.0, reset)).encode()),
    ]


def duration(seconds: float) -> str:
    """OpenAI's form of a reset time: ``250ms``, ``12s``, ``1m30s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def limited(allowance: str, wait: float) -> RateLimitError:
    return RateLimitError(
        f"Rate limit reached: this API key may use {allowance}. Retry after {max(1, math.ceil(wait))} s.",
        retry_after=max(1, math.ceil(wait)),
    )
