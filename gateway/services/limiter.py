"""Per-key limits shared by every gateway replica through Redis (``limits.redis_url``), with the
in-process counters of :mod:`gateway.services.quotas` as the fallback.

One round trip admits a request: a Lua script, atomic in Redis, trims the key's sliding windows,
checks ``max_concurrent``, ``rpm`` and ``tpm`` and counts the request in (on Redis's own clock, so
the replicas' clocks do not matter). A second one, once the request has ended, counts its tokens and
its slot out. When Redis cannot be reached the gateway keeps serving on per-process counters (a
warning, ``offload_limits_shared`` 0) and tries Redis again every few seconds.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from gateway.config import OffloadConfig
from gateway.errors import RateLimitError
from gateway.keys import Principal
from gateway.metrics import Metrics
from gateway.services.quotas import Quotas, limited, ratelimit_headers

_log = structlog.get_logger("offload.limits")
_RETRY_REDIS = 5.0  # seconds on local counters before Redis is tried again
_LIMIT, _REMAINING = b"x-ratelimit-limit-", b"x-ratelimit-remaining-"

# KEYS: the key's request times (zset), token buckets by second (hash), requests in flight (string).
# ARGV: window ms, rpm, tpm, max_concurrent (0: none), a unique member for this request.
# Returns {admitted 1/0, now ms, wait ms, requests, tokens, oldest request, oldest tokens, why refused}.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local rpm, tpm, conc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local since = now - window
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', since)
local count = redis.call('ZCARD', KEYS[1])
local oldest_req = -1
if count > 0 then oldest_req = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]) end
local tokens, oldest_tok = 0, -1
local buckets = redis.call('HGETALL', KEYS[2])
for i = 1, #buckets, 2 do
  local at = tonumber(buckets[i])
  if at <= since then
    redis.call('HDEL', KEYS[2], buckets[i])
  else
    tokens = tokens + tonumber(buckets[i + 1])
    if oldest_tok < 0 or at < oldest_tok then oldest_tok = at end
  end
end
local inflight = tonumber(redis.call('GET', KEYS[3]) or '0')
local state = {count, tokens, oldest_req, oldest_tok}
local function refuse(wait, why) return {0, now, wait, state[1], state[2], state[3], state[4], why} end
if conc > 0 and inflight >= conc then return refuse(1000, 1) end
if rpm > 0 and count >= rpm then return refuse(oldest_req + window - now, 2) end
if tpm > 0 and tokens >= tpm then return refuse(oldest_tok + window - now, 3) end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[1], window)
  count = count + 1
  if oldest_req < 0 then oldest_req = now end
end
if conc > 0 then
  redis.call('INCR', KEYS[3])
  redis.call('PEXPIRE', KEYS[3], window * 10)
end
return {1, now, 0, count, tokens, oldest_req, oldest_tok, 0}
"""
# KEYS as above; ARGV: window ms, tokens used, whether the key counts requests in flight (1/0).
_RELEASE = """
if tonumber(ARGV[3]) > 0 then
  if redis.call('DECR', KEYS[3]) < 0 then redis.call('SET', KEYS[3], 0) end
end
local used = tonumber(ARGV[2])
if used > 0 then
  local t = redis.call('TIME')
  local second = tonumber(t[1]) * 1000
  redis.call('HINCRBY', KEYS[2], second, used)
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[1]))
end
return 1
"""


@dataclass(frozen=True, slots=True)
class Admission:
    """A request counted in: its x-ratelimit headers, and where it must be counted out."""

    headers: list[tuple[bytes, bytes]]
    shared: bool


class RedisQuotas:
    """The per-key counters in Redis."""

    def __init__(self, url: str, window: float) -> None:
        self.url = url
        self.window = window
        self._client = aioredis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._admit = self._client.register_script(_ADMIT)
        self._release = self._client.register_script(_RELEASE)

    @staticmethod
    def _keys(principal: Principal) -> list[str]:
        # One hash tag per key: its three counters live on one Redis Cluster slot.
        base = f"offload:limits:{{{principal.name}}}"
        return [f"{base}:requests", f"{base}:tokens", f"{base}:in_flight"]

    async def admit(self, principal: Principal) -> list[tuple[bytes, bytes]]:
        """Count a request in, or raise :class:`RateLimitError`; its x-ratelimit headers."""
        window_ms = int(self.window * 1000)
        args = [window_ms, principal.rpm or 0, principal.tpm or 0, principal.max_concurrent or 0]
        ok, now, wait, count, tokens, oldest_req, oldest_tok, reason = await self._admit(
            keys=self._keys(principal), args=[*args, secrets.token_hex(8)]
        )
        headers = self._headers(principal, int(count), int(tokens), oldest_req, oldest_tok, now)
        if ok:
            return headers
        allowance = {
            1: f"at most {principal.max_concurrent} requests in flight",
            2: f"{principal.rpm} requests per {self.window:g} s",
            3: f"{principal.tpm} tokens per {self.window:g} s",
        }[int(reason)]
        error = limited(allowance, int(wait) / 1000)
        error.rate_headers = tuple(headers)
        raise error

    def _headers(
        self, principal: Principal, count: int, tokens: int, oldest_req: int, oldest_tok: int, now: int
    ) -> list[tuple[bytes, bytes]]:
        window_ms = self.window * 1000
        out: list[tuple[bytes, bytes]] = []

        def reset(oldest: int) -> float:
            return 0.0 if oldest < 0 else (oldest + window_ms - now) / 1000

        if principal.rpm is not None:
            out += ratelimit_headers("requests", principal.rpm, principal.rpm - count, reset(oldest_req))
        if principal.tpm is not None:
            out += ratelimit_headers("tokens", principal.tpm, principal.tpm - tokens, reset(oldest_tok))
        return out

    async def release(self, principal: Principal, tokens: int) -> None:
        """Count a request out, with the tokens it used."""
        window_ms = int(self.window * 1000)
        counts_in_flight = 1 if principal.max_concurrent is not None else 0
        await self._release(keys=self._keys(principal), args=[window_ms, tokens, counts_in_flight])

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


class Limiter:
    """Admits requests of limited keys: through Redis when configured and reachable, else here."""

    def __init__(self, window: float, metrics: Metrics, redis_url: str | None = None) -> None:
        self._local = Quotas(window)
        self._metrics = metrics
        self._redis: RedisQuotas | None = None
        self._retry_at = 0.0
        self._down = False
        self._configure(window, redis_url)

    def _configure(self, window: float, redis_url: str | None) -> None:
        self._local.window = window
        if self._redis is not None and self._redis.url == redis_url:
            self._redis.window = window
        elif redis_url is not None:
            self._redis = RedisQuotas(redis_url, window)  # (a replaced client's pool is dropped)
        else:
            self._redis = None
        self._metrics.limits_shared.set(1 if self._redis is not None else 0)

    async def rebuild(self, config: OffloadConfig) -> None:
        """A reloaded configuration's window and Redis URL."""
        self._configure(config.limits.window_seconds, config.limits.redis_url)

    async def admit(self, principal: Principal) -> Admission:
        """Count a request of ``principal`` in, or raise :class:`RateLimitError`."""
        try:
            admission = await self._admit(principal)
        except RateLimitError as exc:
            self._record_budget(principal.name, exc.rate_headers)
            raise
        self._record_budget(principal.name, admission.headers)
        return admission

    def _record_budget(self, key: str, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """``offload_key_limit_remaining_ratio`` from the x-ratelimit headers just computed: both
        counters (Redis and local) give them, so the gauge says what the key was told."""
        limits: dict[bytes, int] = {}
        remaining: dict[bytes, int] = {}
        for name, value in headers:
            if name.startswith(_LIMIT):
                limits[name[len(_LIMIT) :]] = int(value)
            elif name.startswith(_REMAINING):
                remaining[name[len(_REMAINING) :]] = int(value)
        for kind, limit in limits.items():
            ratio = remaining.get(kind, 0) / limit
            self._metrics.child(self._metrics.key_budget, key, kind.decode()).set(ratio)

    async def _admit(self, principal: Principal) -> Admission:
        redis = self._redis
        if redis is not None and time.monotonic() >= self._retry_at:
            try:
                headers = await redis.admit(principal)
            except (RedisError, OSError, TimeoutError) as exc:
                self._fell_back(exc)
            else:
                if self._down:
                    self._down = False
                    self._metrics.limits_shared.set(1)
                    _log.info("limits shared through Redis again")
                return Admission(headers, shared=True)
        return Admission(self._local.admit(principal), shared=False)

    async def release(self, principal: Principal, tokens: int, admission: Admission) -> None:
        """Count a request out where it was counted in."""
        if admission.shared and self._redis is not None:
            try:
                await self._redis.release(principal, tokens)
            except (RedisError, OSError, TimeoutError) as exc:
                self._fell_back(exc)
            return
        self._local.release(principal, tokens)

    def _fell_back(self, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            _log.warning("Redis unreachable: limits counted per process meanwhile", error=type(exc).__name__)
        self._retry_at = time.monotonic() + _RETRY_REDIS
        self._metrics.limits_shared.set(0)
        self._metrics.limits_fallbacks.inc()

    async def close(self) -> None:
        """Close the Redis pool, if any."""
        if self._redis is not None:
            await self._redis.close()
