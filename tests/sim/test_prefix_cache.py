"""The simulator's prefix-cache knob: an LRU of prompt blocks; a hit shortens the time to first token."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from engines.sim import Knobs, SimConfig
from engines.sim.__main__ import parse_args
from engines.sim.prefix_cache import CHARS_PER_TOKEN, PrefixCache
from tests.sim.conftest import RunningSim

StartSim = Callable[[SimConfig], RunningSim]
BLOCK = 4  # tokens a block in these tests: 16 characters


def _text(blocks: int, tag: str = "a") -> str:
    """``blocks`` whole blocks of distinct text starting with ``tag``."""
    return "".join(f"{tag}{i:03d}".ljust(BLOCK * CHARS_PER_TOKEN, ".") for i in range(blocks))


def test_a_repeated_prompt_hits_its_whole_blocks_only() -> None:
    cache = PrefixCache(capacity_tokens=1000, block_tokens=BLOCK)
    prompt = _text(5) + "tail"  # 5 whole blocks and a partial one
    assert cache.lookup(prompt, 22).cached_tokens == 0
    again = cache.lookup(prompt, 22)
    assert again.cached_tokens == 5 * BLOCK
    assert again.share == pytest.approx(20 / 22)
    assert (cache.hit_tokens, cache.query_tokens) == (20, 44)


def test_a_shared_head_hits_and_a_different_head_does_not() -> None:
    cache = PrefixCache(capacity_tokens=1000, block_tokens=BLOCK)
    cache.lookup(_text(4) + _text(2, "x"), 24)
    assert cache.lookup(_text(4) + _text(2, "y"), 24).cached_tokens == 4 * BLOCK
    # Same later blocks after a different first block: blocks are chained, nothing matches.
    assert (
        cache.lookup(_text(1, "z") + _text(4)[BLOCK * CHARS_PER_TOKEN :] + _text(2, "x"), 24).cached_tokens
        == 0
    )


def test_capacity_bounds_the_blocks_and_the_least_recent_prompt_goes_first() -> None:
    cache = PrefixCache(capacity_tokens=8 * BLOCK, block_tokens=BLOCK)
    a, b, c = _text(4, "a"), _text(4, "b"), _text(4, "c")
    cache.lookup(a, 16)
    cache.lookup(b, 16)
    cache.lookup(a, 16)  # a is now the most recent
    cache.lookup(c, 16)  # evicts b, not a
    assert len(cache) == 8
    assert cache.lookup(a, 16).cached_tokens == 16
    assert cache.lookup(b, 16).cached_tokens == 0


def test_eviction_takes_a_prompts_tail_before_its_head() -> None:
    cache = PrefixCache(capacity_tokens=6 * BLOCK, block_tokens=BLOCK)
    cache.lookup(_text(4, "a"), 16)
    cache.lookup(_text(2, "b"), 8)  # 6 blocks: full
    cache.lookup(_text(2, "c"), 8)  # two must go: a's last two, so a's head still hits
    assert cache.lookup(_text(4, "a"), 16).cached_tokens == 2 * BLOCK


def test_the_prefix_cache_is_off_by_default() -> None:
    assert SimConfig().prefix_cache_tokens == 0
    config, _ = parse_args(["--prefix-cache-tokens", "4096", "--prefix-block-tokens", "32"])
    assert (config.prefix_cache_tokens, config.prefix_block_tokens) == (4096, 32)
    with pytest.raises(SystemExit):
        parse_args(["--prefix-block-tokens", "0"])


def _first_token_after(sim: RunningSim, prompt: str) -> float:
    start = time.perf_counter()
    stream = sim.client().chat.completions.create(
        model="sim", messages=[{"role": "user", "content": prompt}], stream=True, max_tokens=2
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            elapsed = time.perf_counter() - start
            stream.close()
            return elapsed
    raise AssertionError("no token")


PROMPT = "shared context. " * 250  # 4,000 characters: ~1,000 tokens


def test_a_cached_prompt_gets_its_first_token_sooner_and_metrics_count_the_hit(start_sim: StartSim) -> None:
    sim = start_sim(SimConfig(prefix_cache_tokens=8192, knobs=Knobs(ttft=1.0)))
    assert _first_token_after(sim, PROMPT + "question one") >= 1.0  # cold
    assert (
        _first_token_after(sim, PROMPT + "question two") < 0.5
    )  # ~98% cached: 0.02 s, plus the client's own ~0.1 s
    hits, queries = sim.metric("vllm:prefix_cache_hits_total"), sim.metric("vllm:prefix_cache_queries_total")
    assert 0.45 < hits / queries < 0.5  # the second of two nearly equal prompts hit


def test_without_the_knob_a_repeated_prompt_is_no_faster(start_sim: StartSim) -> None:
    sim = start_sim(SimConfig(knobs=Knobs(ttft=0.3)))
    assert _first_token_after(sim, PROMPT) >= 0.3
    assert _first_token_after(sim, PROMPT) >= 0.3
    assert sim.metric("vllm:prefix_cache_hits_total") == 0
