"""Property tests (hypothesis) of two pieces of the gateway that take input it does not control.

* The SSE reader (:class:`gateway.upstream.EventStream`) splits an engine's bytes into ``data:``
  payloads. However the bytes of a well-formed stream are cut into reads (TCP decides, not vLLM), the
  same payloads come out in the same order; any bytes without a lone CR read the same however cut; and
  any bytes at all end,
  perhaps broken off by a connection error, in payloads followed by ``[DONE]`` or an
  :class:`EngineError`: never another exception, never a hang.
* Version choice (:mod:`gateway.routing.versions`, weighted rendezvous hashing): unpinned requests
  follow the weights, a session key always gets the same version whatever order the versions are
  listed in, and a re-weighting moves only sessions that must move, as its docstring promises: exactly
  (session by session) when the weights of two versions change or one version's weight changes. When
  weight moves between two of three or more versions it does not hold: sessions of a version whose
  weight did not change move too (``test_moving_weight_between_two_of_three_versions_...``, xfail).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import re
from collections.abc import Sequence

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.errors import EngineError
from gateway.routing.table import Route, Version
from gateway.routing.versions import choose_version, rendezvous
from gateway.upstream import EventStream
from tests.unit.test_upstream import ScriptedResponse

EXAMPLES = int(os.environ.get("OFFLOAD_PROPERTY_EXAMPLES", "200"))  # `make fuzz` runs more
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DONE = b"data: [DONE]"

# --- the SSE reader ------------------------------------------------------------------------------

Read = bytes | BaseException


async def _drain(reads: Sequence[Read]) -> tuple[list[bytes], str]:
    """Everything the stream yields for these reads, and how it ended: ``done`` (``[DONE]`` seen) or
    ``error`` (an EngineError). Any other exception fails the test; so does taking over 5 s."""
    stream = EventStream(ScriptedResponse(reads), idle_timeout=30.0)  # type: ignore[arg-type]
    payloads: list[bytes] = []
    async with asyncio.timeout(5):
        try:
            async for payload in stream:
                payloads.append(payload)
        except EngineError:
            assert not stream.finished
            return payloads, "error"
    assert stream.finished
    return payloads, "done"


def drain(reads: Sequence[Read]) -> tuple[list[bytes], str]:
    return asyncio.run(_drain(reads))


def cut(data: bytes, points: Sequence[int]) -> list[bytes]:
    """``data`` cut at ``points`` into non-empty reads (a read of b"" is the end of the body)."""
    edges = [0, *sorted({p for p in points if 0 < p < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


def per_event(data: bytes) -> list[bytes]:
    """``data`` read one event at a time (each read ends after a ``\n\n``)."""
    return cut(data, [m.end() for m in re.finditer(rb"\n\n", data)])


# A payload as vLLM writes them: one line of JSON-ish text (no CR or LF), not starting with a space
# (the reader drops the spaces after "data:"), never "[DONE]".
payloads = (
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), min_size=1, max_size=40)
    .map(str.encode)
    .filter(lambda p: not p.startswith(b" ") and p != b"[DONE]")
)
line_ends = st.sampled_from([b"\n", b"\r\n"])
# Lines that are not data: comments (the gateway's and vLLM's pings) and other fields.
other_lines = st.sampled_from([b": ping", b":", b"event: message", b"id: 7", b"retry: 1000", b"data:"])


@st.composite
def event_streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A well-formed stream (LF or CRLF line ends, mixed at will) and the payloads it carries."""
    out, expected = b"", []
    for _ in range(draw(st.integers(0, 8))):
        lines = draw(st.lists(other_lines, max_size=2))
        if draw(st.booleans()):
            payload = draw(payloads)
            lines.insert(
                draw(st.integers(0, len(lines))), draw(st.sampled_from([b"data: ", b"data:"])) + payload
            )
            expected.append(payload)
        for line in lines:
            out += line + draw(line_ends)
        out += draw(line_ends)  # the blank line that ends the event
    out += DONE + draw(line_ends) + draw(line_ends)
    out += draw(st.sampled_from([b"", b"\r\n0\r\n\r\n", b'data: {"after":"done"}\n\n']))  # ignored
    return out, expected


@FAST
@given(event_streams(), st.lists(st.integers(0, 2000), max_size=30))
@example((b"data: a\r\n\ndata: [DONE]\n\n", [b"a"]), [10])  # the one-event fast path saw "a\r"
def test_any_cut_of_a_stream_relays_the_same_events(
    stream: tuple[bytes, list[bytes]], points: list[int]
) -> None:
    data, expected = stream
    assert drain(cut(data, points)) == (expected, "done")
    assert drain(per_event(data)) == (expected, "done")  # as vLLM writes: one event per read
    assert drain([data]) == (expected, "done")
    assert drain([bytes([b]) for b in data]) == (expected, "done")


def test_a_crlf_line_end_before_the_blank_line_is_not_part_of_the_payload() -> None:
    """Regression: an event whose data line ends in CRLF and whose blank line is LF, read in one piece,
    went through the single-event fast path and kept the CR (``b"a\\r"``); cut anywhere else, ``b"a"``."""
    event, done = b'data: {"a":1}\r\n\n', b"data: [DONE]\n\n"
    assert drain([event, done]) == ([b'{"a":1}'], "done")
    assert drain([event[:3], event[3:], done]) == ([b'{"a":1}'], "done")


# Any bytes: random ones, and random runs of the pieces SSE is made of (which random bytes seldom hit).
PIECES = [b"data:", b"data: ", b" ", b"\n", b"\r\n", b"\r", b"[DONE]", b'{"a":1}', b"x", b":", b"event: e"]
junk = st.one_of(st.binary(max_size=300), st.lists(st.sampled_from(PIECES), max_size=60).map(b"".join))


@FAST
@given(junk, st.lists(st.integers(0, 300), max_size=20), st.booleans())
@example(b"\n\n", [], False)
@example(b"data: [DONE]", [], False)
@example(b"data:\n\ndata: [DONE]\n\n", [], True)
def test_any_bytes_end_in_events_or_an_engine_error(data: bytes, points: list[int], broken: bool) -> None:
    """Whatever the engine sends, however it is cut, and even when the connection then breaks."""
    reads: list[Read] = list(cut(data, points))
    if broken:
        reads.append(aiohttp.ClientPayloadError("connection reset"))
    payloads, end = drain(reads)
    assert all(payload for payload in payloads)  # an empty data line is never relayed
    if end == "done":
        assert re.search(rb"data: *\[DONE\]", data)


def without_lone_cr(data: bytes) -> bytes:
    return re.sub(rb"\r(?!\n)", b"", data)


@FAST
@given(junk.map(without_lone_cr), st.lists(st.integers(0, 300), max_size=20))
@example(b"data: a\n\n\ndata: b\n\ndata: [DONE]\n\n", [10])
@example(b"data: a\r\n\r\ndata: [DONE]\r\n\r\n", [8, 10])
def test_any_cut_of_any_bytes_reads_the_same(data: bytes, points: list[int]) -> None:
    """The reader keeps no state but the bytes of an unfinished event: whole, byte by byte or cut
    anywhere, the same outcome. Not with a lone CR (a legal SSE line end that vLLM never sends, and
    the reader does not take for one): ``data: a\r\r\n\n`` reads ``a\r`` whole, ``a`` when cut
    after its CRLF (normalised once, then once more with the next read)."""
    whole = drain([data])
    assert drain(cut(data, points)) == whole
    assert drain([bytes([b]) for b in data]) == whole


# --- version choice ------------------------------------------------------------------------------


def route(weights: Sequence[float]) -> Route:
    """A model with versions v0, v1... of these weights (no replicas: only the choice is tested)."""
    versions = {f"v{i}": Version("chat", f"v{i}", (), weight=float(w)) for i, w in enumerate(weights)}
    return Route("chat", "chat", versions)


def sticky(weights: Sequence[float], session: str) -> str:
    return choose_version(route(weights), None, session).version.name


sessions = st.text(min_size=1, max_size=30)
weight_lists = st.lists(st.integers(1, 100), min_size=2, max_size=5)


@FAST
@given(weight_lists, sessions)
def test_a_session_always_gets_the_same_version_whatever_the_listing_order(
    weights: list[int], session: str
) -> None:
    named = [(f"v{i}", float(w)) for i, w in enumerate(weights)]
    first = sticky(weights, session)
    assert sticky(weights, session) == first
    assert rendezvous(session, named[::-1]) == rendezvous(session, named) == first
    assert choose_version(route(weights), None, session).reason == "sticky"


def _within(count: int, n: int, p: float) -> bool:
    """``count`` of ``n`` draws is within 5 standard deviations of a share ``p``."""
    return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1


@settings(max_examples=25, deadline=None)
@given(weight_lists, st.integers(0, 2**32))
def test_sessions_and_unpinned_requests_follow_the_weights(weights: list[int], salt: int) -> None:
    n = 3000
    by_session = [sticky(weights, f"{salt}-{i}") for i in range(n)]
    by_draw = [choose_version(route(weights), None, None).version.name for _ in range(n)]
    total = sum(weights)
    for i, w in enumerate(weights):
        assert _within(by_session.count(f"v{i}"), n, w / total), (weights, i)
        assert _within(by_draw.count(f"v{i}"), n, w / total), (weights, i)


@FAST
@given(st.integers(1, 100), st.integers(1, 100), st.integers(1, 100), st.integers(1, 100), sessions)
def test_two_versions_reweighted_a_session_moves_only_to_the_one_that_gained(
    a: int, b: int, a2: int, b2: int, session: str
) -> None:
    """Weights (a, b) -> (a2, b2): the share of v1 goes from b/(a+b) to b2/(a2+b2); a session may move
    only towards the version whose share grew (so exactly the difference moves)."""
    before, after = sticky([a, b], session), sticky([a2, b2], session)
    if before != after:
        grew = "v1" if b2 * (a + b) > b * (a2 + b2) else "v0"
        assert after == grew


@FAST
@given(weight_lists, st.data(), sessions)
def test_one_version_reweighted_a_session_moves_only_to_or_from_it(
    weights: list[int], data: st.DataObject, session: str
) -> None:
    """One version's weight changes, the others' stay: a session moves only into it (its weight grew)
    or out of it (its weight shrank), never between two others."""
    changed = data.draw(st.integers(0, len(weights) - 1))
    new = [*weights]
    new[changed] = data.draw(st.integers(1, 100))
    before, after = sticky(weights, session), sticky(new, session)
    if before != after:
        name = f"v{changed}"
        assert after == name if new[changed] > weights[changed] else before == name


@settings(max_examples=10, deadline=None)
@given(st.integers(10, 90), st.integers(1, 9), st.integers(0, 2**32))
def test_a_reweighting_moves_about_the_minimum_share(a: int, step: int, salt: int) -> None:
    """Two versions, v1 gaining ``step`` percent: about ``step`` percent of sessions move."""
    n = 4000
    before = [100 - a, a]
    after = [100 - a - step, a + step] if a + step < 100 else [100 - a + step, a - step]
    moved = sum(sticky(before, f"{salt}:{i}") != sticky(after, f"{salt}:{i}") for i in range(n))
    assert _within(moved, n, step / 100)


@pytest.mark.xfail(
    strict=True,
    reason="weighted rendezvous hashing: weight moved between two of three versions also moves sessions "
    "through the third (c->b and a->c), beyond the minimum share",
)
def test_moving_weight_between_two_of_three_versions_leaves_the_third_alone() -> None:
    """Minimal movement for a canary step with a third version: (50, 25, 25) -> (25, 50, 25) must move
    25% of sessions, all from v0 to v1; measured: about 29%, 5% of them v2 -> v1 and 5% v0 -> v2."""
    before, after = [50, 25, 25], [25, 50, 25]
    moves = {(sticky(before, f"s{i}"), sticky(after, f"s{i}")) for i in range(5000)}
    assert moves <= {("v0", "v0"), ("v1", "v1"), ("v2", "v2"), ("v0", "v1")}
