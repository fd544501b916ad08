"""Admission control per model version: at most ``max_in_flight`` requests per replica reach the
engines; more wait here, in a bounded queue served fairly across API keys by their weights.

Why here and not in the engine: vLLM queues what it cannot batch first come, first served, so one
key sending in a loop sits in front of everyone else. Held at the gateway, waiting requests are
taken in the order of whose turn it is, and a request that cannot be served in time is told so
quickly (429 or 503 with ``Retry-After``) instead of piling onto the engine.

* **Fair share.** A key is *active* on a version while it has requests in flight or waiting there
  (or a slot held for it, below). Each active key is entitled to ``capacity × weight / Σ active
  weights`` slots. A freed slot goes to the waiting key with the fewest slots per unit of weight
  (weighted max-min fairness; ties go to whoever waited longest). Work-conserving: a key alone may
  use every slot, and an idle key's share goes to the busy ones.
* **Anticipation.** A closed-loop client (it sends its next request when the last one ends) has no
  request waiting at the instant one ends, so the freed slot would go to the flooding key and the
  client would wait behind one of that key's requests every time. When a key below its share frees
  a slot while others wait, the slot is held for it for ``hold`` seconds (50 ms by default): its
  next request takes it at once; if none comes, the slot goes to the queue. (Anticipatory
  scheduling, as disk schedulers do for a process's next read.)
* **Bounded.** At most ``queue_size`` requests wait per version, each at most ``queue_timeout``
  seconds. A full queue pushes out the newest waiter of the key furthest over its share, unless
  that is the newcomer's own key. A refusal is a 429 when the key holds at least its share (it is
  the one asking too much) and a 503 when the model is saturated.

All of it runs on the event loop's thread: no locks, and no await between a check and its update.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from dataclasses import dataclass, field

from gateway.config import AdmissionConfig, OffloadConfig
from gateway.errors import EngineUnavailableError, GatewayError, RateLimitError
from gateway.metrics import Metrics
from gateway.record import RequestRecord
from gateway.routing.table import Version


class _State(enum.Enum):
    WAITING = enum.auto()
    GRANTED = enum.auto()
    GONE = enum.auto()  # timed out, pushed out or cancelled


@dataclass(slots=True, eq=False)
class _Waiter:
    future: asyncio.Future[None]
    since: float
    state: _State = _State.WAITING


@dataclass(slots=True, eq=False)
class _Tenant:
    """One key's standing on one version."""

    weight: float
    in_flight: int = 0
    waiting: deque[_Waiter] = field(default_factory=deque)
    holds: deque[asyncio.TimerHandle] = field(default_factory=deque)

    @property
    def idle(self) -> bool:
        return not (self.in_flight or self.waiting or self.holds)


class Gate:
    """The slots of one model version and the requests waiting for them."""

    def __init__(self, label: tuple[str, str], capacity: int, settings: AdmissionConfig, metrics: Metrics):
        self.label = label
        self.capacity = capacity
        self.settings = settings
        self._metrics = metrics
        self._tenants: dict[str, _Tenant] = {}
        self._weights = 0.0  # of the active tenants
        self.in_flight = 0
        self.held = 0
        self.queued = 0

    # -- entering -------------------------------------------------------------------------------

    def try_enter(self, key: str, weight: float) -> bool:
        """Take a slot now if one is free for ``key`` (its held slot, or a free one with nobody
        waiting); False when the request must :meth:`wait`."""
        tenant = self._tenants.get(key)
        if tenant is not None and tenant.holds:
            tenant.holds.popleft().cancel()
            self.held -= 1
        elif self.queued or self.in_flight + self.held >= self.capacity:
            return False
        elif tenant is None:
            tenant = self._join(key, weight)
        tenant.in_flight += 1
        self.in_flight += 1
        return True

    async def wait(self, key: str, weight: float) -> None:
        """Wait for a slot (after :meth:`try_enter` said no). Raises a 429 or 503 when the queue is
        full or the wait runs past ``queue_timeout``; a cancelled wait leaves nothing behind."""
        tenant = self._tenants.get(key) or self._join(key, weight)
        if self.queued >= self.settings.queue_size:
            self._make_room(tenant)
        waiter = _Waiter(asyncio.get_running_loop().create_future(), time.monotonic())
        tenant.waiting.append(waiter)
        self.queued += 1
        self._dispatch()  # a slot may be free (held slots expired, capacity grown)
        try:
            # asyncio.timeout, not wait_for: wait_for swallows a cancellation that arrives just
            # after the grant, and the request would go on after its client left.
            async with asyncio.timeout(self.settings.queue_timeout):
                await waiter.future
        except TimeoutError:
            if waiter.state is not _State.GRANTED:  # (granted as time ran out: served after all)
                refusal = self._refusal(tenant, "timeout")
                self._abandon(key, tenant, waiter)
                raise refusal from None
        except BaseException:
            if waiter.state is _State.GRANTED:
                self.leave(key)  # granted, then cancelled before it could run: hand the slot on
            else:
                self._abandon(key, tenant, waiter)
            raise
        self._metrics.admission_wait.labels(*self.label).observe(time.monotonic() - waiter.since)

    def _abandon(self, key: str, tenant: _Tenant, waiter: _Waiter) -> None:
        """Take a waiter that gives up out of the queue (if the gate has not already)."""
        if waiter.state is _State.WAITING:
            waiter.state = _State.GONE
            tenant.waiting.remove(waiter)
            self.queued -= 1
            self._forget(key, tenant)

    # -- leaving --------------------------------------------------------------------------------

    def leave(self, key: str) -> None:
        """A request of ``key`` that held a slot ended: hold the slot for the key's next request
        when it is below its share and others wait, else give it to the queue."""
        tenant = self._tenants[key]
        tenant.in_flight -= 1
        self.in_flight -= 1
        hold = self.settings.hold
        if (
            hold > 0
            and self.queued  # someone else wants the slot (the key itself has none waiting)
            and not tenant.waiting
            and tenant.in_flight + len(tenant.holds) < self._share(tenant)
        ):
            loop = asyncio.get_running_loop()
            tenant.holds.append(loop.call_later(hold, self._expire, key))
            self.held += 1
            return
        self._dispatch()
        self._forget(key, tenant)

    def _expire(self, key: str) -> None:
        """A held slot was not taken in time: it goes to the queue."""
        tenant = self._tenants[key]
        tenant.holds.popleft()  # timers of equal delay fire in the order they were set
        self.held -= 1
        self._dispatch()
        self._forget(key, tenant)

    def resize(self, capacity: int) -> None:
        """The version's replicas changed (a reload, DNS discovery): new slot count."""
        self.capacity = capacity
        self._dispatch()

    # -- internals ------------------------------------------------------------------------------

    def _join(self, key: str, weight: float) -> _Tenant:
        tenant = self._tenants[key] = _Tenant(weight)
        self._weights += weight
        return tenant

    def _forget(self, key: str, tenant: _Tenant) -> None:
        if tenant.idle and self._tenants.get(key) is tenant:
            del self._tenants[key]
            self._weights = sum(t.weight for t in self._tenants.values())  # no drift from += / -=

    def _share(self, tenant: _Tenant) -> float:
        return self.capacity * tenant.weight / self._weights

    def _dispatch(self) -> None:
        """Grant free slots to the waiting keys with the fewest slots per unit of weight."""
        while self.queued and self.in_flight + self.held < self.capacity:
            best: _Tenant | None = None
            for tenant in self._tenants.values():
                if tenant.waiting and (
                    best is None
                    or (tenant.in_flight / tenant.weight, tenant.waiting[0].since)
                    < (best.in_flight / best.weight, best.waiting[0].since)
                ):
                    best = tenant
            assert best is not None  # queued > 0
            waiter = best.waiting.popleft()
            self.queued -= 1
            if waiter.future.done():  # cancelled; its task has yet to run its cleanup
                waiter.state = _State.GONE
                continue
            waiter.state = _State.GRANTED
            best.in_flight += 1
            self.in_flight += 1
            waiter.future.set_result(None)

    def _make_room(self, newcomer: _Tenant) -> None:
        """The queue is full: push out the newest waiter of the key furthest over its share, or
        refuse the newcomer when that is its own key."""

        def excess(t: _Tenant) -> float:
            return (t.in_flight + len(t.waiting)) / t.weight

        worst = max((t for t in self._tenants.values() if t.waiting), key=excess, default=None)
        if worst is None or worst is newcomer or excess(worst) <= excess(newcomer) + 1 / newcomer.weight:
            raise self._refusal(newcomer, "queue_full")
        victim = worst.waiting.pop()
        victim.state = _State.GONE
        self.queued -= 1
        victim.future.set_exception(self._refusal(worst, "pushed_out"))

    def _refusal(self, tenant: _Tenant, reason: str) -> GatewayError:
        """429 when the key holds at least its share of the version while other keys use it too,
        else 503 (the model is saturated)."""
        model, version = self.label
        name = f"{model}:{version}" if version != "-" else model
        retry_after = max(1, round(self.settings.queue_timeout / 10))
        over = len(self._tenants) > 1 and tenant.in_flight >= self._share(tenant)
        self._metrics.admission_refused.labels(model, version, "over_share" if over else reason).inc()
        if over:
            return RateLimitError(
                f"This API key is using its share of '{name}', which is busy; retry shortly.",
                retry_after=retry_after,
            )
        return EngineUnavailableError(
            f"The model '{name}' is saturated; retry shortly.", retry_after=retry_after
        )


class Admission:
    """A :class:`Gate` per model version with a per-replica limit; created when first needed."""

    def __init__(self, settings: AdmissionConfig, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._gates: dict[str, dict[str, Gate]] = {}

    async def rebuild(self, config: OffloadConfig) -> None:
        """A reloaded configuration's queue settings (slot counts follow the route table)."""
        self._settings = config.admission
        for gates in self._gates.values():
            for gate in gates.values():
                gate.settings = config.admission

    async def enter(self, version: Version, record: RequestRecord) -> Gate | None:
        """Take a slot of ``version`` for the request, waiting if need be; the gate to
        :meth:`Gate.leave` when it ends (with the record's key), or None when there is no limit."""
        gate = self.gate(version)
        if gate is not None and not gate.try_enter(record.key or "", record.weight):
            await gate.wait(record.key or "", record.weight)
        return gate

    def gate(self, version: Version) -> Gate | None:
        """The version's gate, or None when its replicas take any number of requests."""
        per_replica = version.max_in_flight
        if per_replica is None or not version.replicas:
            return None  # no replica: the router answers 503 by itself
        capacity = per_replica * len(version.replicas)
        gates = self._gates.get(version.model)
        if gates is None:
            gates = self._gates[version.model] = {}
        gate = gates.get(version.name)
        if gate is None:
            gate = gates[version.name] = Gate(
                (version.model, version.label), capacity, self._settings, self._metrics
            )
        elif gate.capacity != capacity:
            gate.resize(capacity)
        return gate
