"""A simulated prefix cache: a bounded LRU of prompt blocks, shaped like vLLM's automatic prefix caching.

The prompt text is cut into blocks of ``block_tokens`` "tokens" (4 characters each, the simulator's
token estimate); block *i* is named by a hash chained over blocks 0..i, so a block only matches when
everything before it matches too. A lookup counts the longest run of leading blocks already cached
(only whole blocks hit, as in vLLM), then caches every whole block of the prompt, evicting the least
recently used ones past ``capacity_tokens``.

Eviction order follows vLLM's: a finished request's blocks are freed tail first, so under pressure a
prompt loses its last blocks before its first and a shorter shared prefix keeps hitting.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

CHARS_PER_TOKEN = 4
"""The simulator's token estimate (see ``engines.sim.chat``)."""


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the cache held of one prompt."""

    cached_tokens: int
    prompt_tokens: int

    @property
    def share(self) -> float:
        """The cached fraction of the prompt, 0..1."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens > 0 else 0.0


class PrefixCache:
    """An LRU of prompt-prefix blocks for one simulated engine (one event loop: no locking)."""

    def __init__(self, capacity_tokens: int, block_tokens: int = 16) -> None:
        if block_tokens < 1:
            raise ValueError("block_tokens must be >= 1")
        self.block_tokens = block_tokens
        self.capacity_blocks = max(0, capacity_tokens) // block_tokens
        self._blocks: OrderedDict[bytes, None] = OrderedDict()
        self.hit_tokens = 0
        self.query_tokens = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup(self, prompt: str, prompt_tokens: int) -> Lookup:
        """Count the cached leading blocks of ``prompt`` (``prompt_tokens`` long), then cache it."""
        names = self._block_names(prompt)
        cached = 0
        for name in names:
            if name not in self._blocks:
                break
            cached += 1
        # Touch the tail first, the head last: the head is then the most recently used, and LRU
        # eviction takes the tail blocks first (as vLLM's free queue does).
        for name in reversed(names):
            self._blocks[name] = None
            self._blocks.move_to_end(name)
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)
        cached_tokens = min(prompt_tokens, cached * self.block_tokens)
        self.hit_tokens += cached_tokens
        self.query_tokens += prompt_tokens
        return Lookup(cached_tokens, prompt_tokens)

    def _block_names(self, prompt: str) -> list[bytes]:
        size = self.block_tokens * CHARS_PER_TOKEN
        names: list[bytes] = []
        parent = b""
        for start in range(0, len(prompt) - size + 1, size):  # whole blocks only
            block = prompt[start : start + size].encode()
            parent = hashlib.blake2b(parent + block, digest_size=16).digest()
            names.append(parent)
        return names
