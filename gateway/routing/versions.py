"""Choosing the version of a model that serves a request: pins, aliases, weights, stickiness, shadows.

Sticky assignment uses weighted rendezvous hashing: each (session, version) pair gets a score from a
stable hash scaled by the version's weight, and the highest score wins. The same session therefore
always lands on the same version while the weights stay the same, and when they change only the
sessions whose winner changed move (the minimum share), unlike ``hash % n`` or random draws.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import NamedTuple

from gateway.routing.table import Route, Version


class UnknownVersion(LookupError):
    """The request named a version or alias the model does not have."""

    def __init__(self, route: Route, selector: str) -> None:
        names = sorted(route.versions) + sorted(route.aliases)
        super().__init__(
            f"The model '{route.model}' has no version '{selector}'. "
            f"Available: {', '.join(f'{route.model}:{n}' for n in names) or route.model}."
        )


class Choice(NamedTuple):
    """The version chosen for a request and why (for metrics and headers); a named tuple, as
    :class:`~gateway.routing.router.Pick` (made once per request)."""

    version: Version
    reason: str  # pinned | alias | weighted | sticky | only


def split_model(requested: str) -> tuple[str, str | None]:
    """``"chat:v2"`` -> ``("chat", "v2")``; ``"chat"`` -> ``("chat", None)``."""
    name, sep, selector = requested.rpartition(":")
    if not sep or not name:
        return requested, None
    return name, selector


def _unit_hash(*parts: str) -> float:
    """A stable number in (0, 1) for the given strings (same on every gateway replica)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2.0**64


def rendezvous(key: str, weighted: list[tuple[str, float]]) -> str:
    """Weighted rendezvous hashing: the name with the highest ``-w / ln(h(key, name))``."""
    best, best_score = weighted[0][0], -math.inf
    for name, weight in weighted:
        if weight <= 0:
            continue
        score = -weight / math.log(_unit_hash(key, name))
        if score > best_score:
            best, best_score = name, score
    return best


def choose_version(
    route: Route, selector: str | None, session: str | None, rng: random.Random | None = None
) -> Choice:
    """The version for a request: pinned or aliased if named, else by weight (sticky per session)."""
    if selector is not None:
        if selector in route.versions and selector:
            return Choice(route.versions[selector], "pinned")
        target = route.aliases.get(selector)
        if target is not None:
            return Choice(route.versions[target], "alias")
        raise UnknownVersion(route, selector)
    if len(route.versions) == 1:
        return Choice(next(iter(route.versions.values())), "only")
    weighted = [(name, v.weight) for name, v in route.versions.items() if v.weight > 0]
    if session:
        return Choice(route.versions[rendezvous(session, weighted)], "sticky")
    names, weights = zip(*weighted, strict=True)
    pick = (rng or random).choices(names, weights=weights)[0]
    return Choice(route.versions[pick], "weighted")


def choose_shadows(
    route: Route, primary: Version, request_key: str, rng: random.Random | None = None
) -> list[Version]:
    """Versions that also get a copy of this request (their answers are discarded)."""
    shadows = []
    for version in route.versions.values():
        if version.shadow <= 0 or version is primary:
            continue
        draw = _unit_hash(request_key, "shadow", version.name) if request_key else (rng or random).random()
        if draw * 100 < version.shadow:
            shadows.append(version)
    return shadows


def fallback_chain(route: Route, version: Version) -> list[Version]:
    """``version`` followed by its fallbacks, in order, without cycles."""
    chain, seen = [version], {version.name}
    while chain[-1].fallback is not None and chain[-1].fallback not in seen:
        nxt = route.versions[chain[-1].fallback]
        chain.append(nxt)
        seen.add(nxt.name)
    return chain
