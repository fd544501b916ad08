"""Prefix affinity's load bound: a ratio over the average at high load, a slack of requests at low load."""

from __future__ import annotations

import random
from collections import Counter, deque

import pytest

from gateway.routing.load import Loads
from gateway.routing.policy import PrefixAffinity
from gateway.routing.table import Replica

REPLICAS = [
    Replica(id=f"r{i}", model="m", version="", base_url=f"http://e{i}", served_name="m") for i in range(2)
]


def _preferred(key: str) -> tuple[str, str]:
    """The replica a prefix prefers when nothing is loaded, and the other one."""
    first = PrefixAffinity(Loads()).choose(REPLICAS, key).id
    return first, "r1" if first == "r0" else "r0"


@pytest.mark.parametrize(
    ("own", "other", "stays"),
    [
        (3, 0, True),  # 4 streams in all: the ratio alone (cap 3) would move it and miss the cache
        (4, 0, True),  # average 2.5: within the slack of 4
        (9, 0, False),  # 10 > 5 + 4 and > 1.5 x 5: moved
        (20, 8, True),  # average 14.5: the ratio allows 22
        (22, 4, False),  # 23 > 1.5 x 13.5 and > 13.5 + 4
    ],
)
def test_the_prefix_replica_keeps_a_request_until_it_is_over_both_bounds(
    own: int, other: int, stays: bool
) -> None:
    home, away = _preferred("doc")
    loads = Loads()
    for replica, count in ((home, own), (away, other)):
        for _ in range(count):
            loads.begin(replica)
    assert PrefixAffinity(loads).choose(REPLICAS, "doc").id == (home if stays else away)


def test_at_four_streams_every_request_of_a_prefix_lands_on_one_replica() -> None:
    """Closed loop: 4 requests in flight, 24 prefixes x 3 requests in random order, oldest finishes first."""
    loads = Loads()
    policy = PrefixAffinity(loads)
    jobs = [f"doc-{g}" for g in range(24) for _ in range(3)]
    random.Random(7).shuffle(jobs)
    in_flight: deque[str] = deque()
    placed: dict[str, Counter[str]] = {}
    for key in jobs:
        if len(in_flight) == 4:
            loads.end(in_flight.popleft())
        replica = policy.choose(REPLICAS, key).id
        loads.begin(replica)
        in_flight.append(replica)
        placed.setdefault(key, Counter())[replica] += 1
    split = [key for key, replicas in placed.items() if len(replicas) > 1]
    assert split == []
