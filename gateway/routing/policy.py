"""Replica choice policies: small pure classes, ``choose(candidates, key) -> replica``.

Health filtering happens once before a policy sees the candidates (never empty). ``key`` is the
request's prompt prefix (only prefix affinity uses it).
"""

from __future__ import annotations

import hashlib
import itertools
import math
from typing import Protocol

from gateway.config import PolicyName
from gateway.routing.load import Loads
from gateway.routing.table import Replica


class ReplicaPolicy(Protocol):
    """Chooses one of the healthy candidates."""

    def choose(self, candidates: list[Replica], key: str | None = None) -> Replica: ...


class LeastOutstanding:
    """The replica with the least load (our in-flight requests plus the engine's queue)."""

    def __init__(self, loads: Loads) -> None:
        self._loads = loads

    def choose(self, candidates: list[Replica], key: str | None = None) -> Replica:
        return min(candidates, key=lambda r: self._loads.load(r.id))


class RoundRobin:
    """Each replica in turn."""

    def __init__(self, loads: Loads) -> None:
        self._counter = itertools.count()

    def choose(self, candidates: list[Replica], key: str | None = None) -> Replica:
        return candidates[next(self._counter) % len(candidates)]


class PrefixAffinity:
    """Requests sharing a prompt prefix go to the same replica (to hit vLLM's prefix cache), with
    bounded load: a replica already carrying more than ``balance`` times the average load, and more
    than ``slack`` requests above it, is passed over for the next one in the prefix's rendezvous
    order, so a hot prefix cannot pile every request onto one engine (the "death spiral" of
    unbounded affinity).

    The slack matters at low concurrency: with a few requests in flight the ratio alone leaves no
    room (at 4 streams on two replicas it caps one at 3) and moved requests miss the cache (6-12% of
    them in ``benchmarks/prefix_affinity.py``). An engine batches many sequences, so a few more than
    the average is no queue yet (sgl-router's cache-aware policy also needs an absolute imbalance).
    """

    def __init__(self, loads: Loads, balance: float = 1.5, slack: float = 4.0) -> None:
        self._loads = loads
        self._balance = balance
        self._slack = slack

    def choose(self, candidates: list[Replica], key: str | None = None) -> Replica:
        if key is None or len(candidates) == 1:
            return min(candidates, key=lambda r: self._loads.load(r.id))
        loads = {r.id: self._loads.load(r.id) for r in candidates}
        # Bounded loads: nobody takes more than max(balance x, slack +) the average with this request.
        average = (sum(loads.values()) + 1) / len(candidates)
        cap = max(math.ceil(self._balance * average), math.ceil(average + self._slack))
        ranked = sorted(candidates, key=lambda r: _score(key, r.id), reverse=True)
        for replica in ranked:
            if loads[replica.id] + 1 <= cap:
                return replica
        return min(candidates, key=lambda r: loads[r.id])


def _score(key: str, replica_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}\x1f{replica_id}".encode(), digest_size=8).digest(), "big")


POLICIES: dict[PolicyName, type[LeastOutstanding] | type[RoundRobin] | type[PrefixAffinity]] = {
    "least_outstanding": LeastOutstanding,
    "round_robin": RoundRobin,
    "prefix_affinity": PrefixAffinity,
}


def make_policy(name: PolicyName, loads: Loads) -> ReplicaPolicy:
    """A fresh policy instance (per version: round robin keeps its own turn)."""
    return POLICIES[name](loads)
