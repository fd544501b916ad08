"""Per-key limits in this process: sliding windows of requests and tokens, requests in flight, and
OpenAI's x-ratelimit headers. Time is passed in explicitly (``now``)."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.errors import RateLimitError
from gateway.keys import Principal
from gateway.services.quotas import Quotas, duration


def key(**limits: int) -> Principal:
    return Principal("team", "0" * 64, None, False, None, **limits)


def test_requests_beyond_rpm_wait_for_the_oldest_to_leave_the_window() -> None:
    quotas, team = Quotas(window=60), key(rpm=2)
    quotas.admit(team, now=0.0)
    quotas.admit(team, now=10.0)

    with pytest.raises(RateLimitError) as caught:
        quotas.admit(team, now=20.0)

    assert caught.value.status == 429 and caught.value.retry_after == 40  # the request at 0 leaves at 60
    quotas.admit(team, now=60.5)  # the window has slid past it
    with pytest.raises(RateLimitError):
        quotas.admit(team, now=61.0)


def test_tokens_count_when_a_request_ends_and_block_once_the_key_is_over_tpm() -> None:
    quotas, team = Quotas(window=10), key(tpm=100)
    quotas.admit(team, now=0.0)
    quotas.release(team, tokens=60, now=1.0)
    quotas.admit(team, now=2.0)  # 60 < 100: admitted
    quotas.release(team, tokens=50, now=3.0)

    with pytest.raises(RateLimitError) as caught:
        quotas.admit(team, now=4.0)

    assert caught.value.retry_after == 7  # the 60 tokens of t=1 leave at t=11
    quotas.admit(team, now=11.5)


def test_requests_in_flight_are_capped_and_freed_on_release() -> None:
    quotas, team = Quotas(), key(max_concurrent=1)
    quotas.admit(team, now=0.0)

    with pytest.raises(RateLimitError, match="1 requests in flight"):
        quotas.admit(team, now=0.1)

    quotas.release(team, tokens=0, now=0.2)
    quotas.admit(team, now=0.3)


def test_keys_are_counted_apart() -> None:
    quotas = Quotas()
    alice, bob = (
        Principal("alice", "a" * 64, None, False, None, rpm=1),
        Principal("bob", "b" * 64, None, False, None, rpm=1),
    )
    quotas.admit(alice, now=0.0)

    quotas.admit(bob, now=0.0)
    with pytest.raises(RateLimitError):
        quotas.admit(alice, now=1.0)


def test_the_headers_say_limit_remaining_and_reset_for_requests_and_tokens() -> None:
    quotas, team = Quotas(window=60), key(rpm=10, tpm=1000)
    quotas.admit(team, now=0.0)
    quotas.release(team, tokens=250, now=30.0)

    headers = dict(quotas.headers(team, now=45.0))

    assert headers[b"x-ratelimit-limit-requests"] == b"10"
    assert headers[b"x-ratelimit-remaining-requests"] == b"9"
    assert headers[b"x-ratelimit-reset-requests"] == b"15s"
    assert headers[b"x-ratelimit-limit-tokens"] == b"1000"
    assert headers[b"x-ratelimit-remaining-tokens"] == b"750"
    assert headers[b"x-ratelimit-reset-tokens"] == b"45s"
    assert quotas.headers(key(max_concurrent=3), now=0.0) == []  # no rate: no headers


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.25, "250ms"), (1.0, "1s"), (12.2, "13s"), (90, "1m30s"), (0, "0ms")]
)
def test_reset_times_read_as_openai_writes_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


async def test_the_window_follows_the_configuration() -> None:
    quotas = Quotas()
    config = parse_config(
        "models:\n  - {name: m, task: chat, engine: {url: 'http://127.0.0.1:9'}}\nlimits: {window_seconds: 2}\n"
    )

    await quotas.rebuild(config)

    assert quotas.window == 2
