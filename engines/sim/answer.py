"""The simulated answer of a chat request, and where a continuation of it resumes.

**The sequence.** A request's answer is an endless, deterministic sequence of "tokens" (words of
:data:`VOCAB`) drawn from a key; the answer is its first N tokens (N: ``output_tokens`` for a natural
``stop``, else the token limit). The key is derived from the *conversation*: each message's role and
text (a string, or its text parts joined by newlines), in order, plus the request's integer ``seed``
if it has one. Nothing else counts: not other message fields, the model name, ``max_tokens``,
``stream``, ``n``, sampling parameters or simulator knobs. Two requests with the same conversation
(and seed) get the same sequence, on every simulator instance and process; every choice of ``n``
gets the same text.

**Continuations.** With ``continue_final_message: true`` the final message (an assistant message) is
*not* part of the conversation: its text is a prefix of the answer that the request continues. So
"the same request" as an unbroken one means the unbroken request's messages (and seed) plus one
appended assistant message, whatever that message says. :func:`match_prefix` walks the prefix along
the sequence token by token:

- ``exact``: the prefix is the text of the sequence's first K tokens; generation resumes at token K,
  so prefix + continuation is the unbroken answer, byte for byte, and K + the continuation's tokens
  is the unbroken answer's token count.
- ``partial``: the prefix is K whole tokens plus the beginning of token K; the continuation's first
  token is the rest of token K (then K + 1, ...). The text still adds up byte for byte; the partial
  piece is counted in the prompt *and* the rest of that token as one generated token.
- ``mismatch``: the prefix leaves the sequence after K whole tokens (text a real model might have
  been handed by mistake). Generation resumes at token K as if the divergent tail were not there;
  the joined text then differs from the unbroken answer, which a test comparing texts sees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

VOCAB: tuple[str, ...] = (
    " The",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " the",
    " lazy",
    " dog",
    ".",
    " It",
    " is",
    " a",
    " simulated",
    " answer",
    ",",
    " one",
    " token",
    " at",
    " time",
    " and",
    " then",
    " another",
    "!",
    " café",
    " naïve",
    " über",
    " —",
    ' "sim"',
    "\n",
    " 42",
    "?",
)
"""The "tokens" answers are made of: a few are not ASCII, one holds quotes and one is a newline, so
that whoever relays the text must keep it byte for byte. Its length divides 256 (codes are bytes)."""

TOKEN_CODES: tuple[str, ...] = VOCAB * (256 // len(VOCAB))
"""Token text by code (0..255): the vocabulary repeated, so that a code indexes it directly."""

Match = Literal["exact", "partial", "mismatch"]


def content_text(message: Any) -> str | None:
    """A message's text: its ``content`` string, or its text parts joined by newlines (as vLLM
    flattens them for a chat template); None when it has no content."""
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return None


def conversation_key(messages: Sequence[Any], seed: Any = None) -> bytes:
    """The sequence key of a conversation: role and text of each message, in order, and the seed."""
    parts: list[Any] = [[m.get("role") if isinstance(m, dict) else None, content_text(m)] for m in messages]
    if isinstance(seed, int) and not isinstance(seed, bool):
        parts.append(seed)
    return hashlib.blake2b(orjson.dumps(parts), digest_size=16).digest()


class Answer:
    """The endless token sequence of one key: token ``i`` is ``VOCAB[codes[i] % len(VOCAB)]`` where
    ``codes`` is the SHAKE-256 stream of the key (one byte a token, made in C: cheap per token)."""

    __slots__ = ("key",)

    def __init__(self, key: bytes) -> None:
        self.key = key

    def codes(self, stop: int) -> bytes:
        """The codes of tokens 0 .. ``stop - 1`` (a token's code also indexes :data:`TOKEN_CODES`)."""
        return hashlib.shake_256(self.key).digest(stop) if stop > 0 else b""

    def token(self, position: int) -> str:
        return TOKEN_CODES[self.codes(position + 1)[position]]

    def text(self, start: int, stop: int) -> str:
        """The text of tokens ``start`` .. ``stop - 1``."""
        return "".join(TOKEN_CODES[code] for code in self.codes(stop)[start:])


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a continuation resumes (see the module docstring)."""

    position: int
    """Whole tokens of the sequence that the prefix holds; the first generated token is this one."""
    head: str
    """For ``partial``: the rest of token ``position`` (generated first, instead of the whole token)."""
    match: Match
    prompt_tokens: int
    """Tokens the prefix adds to the prompt: ``position``, plus 1 per 4 characters of any text past it."""


def match_prefix(answer: Answer, prefix: str) -> Resume:
    """Match ``prefix`` against ``answer`` token by token."""
    position = 0
    offset = 0
    end = len(prefix)
    codes = answer.codes(end + 1)  # every token has at least one character
    while offset < end:
        token = TOKEN_CODES[codes[position]]
        if prefix.startswith(token, offset):
            offset += len(token)
            position += 1
            continue
        rest = prefix[offset:]
        extra = (len(rest) + 3) // 4
        if token.startswith(rest):
            return Resume(position, token[len(rest) :], "partial", position + extra)
        return Resume(position, "", "mismatch", position + extra)
    return Resume(position, "", "exact", position)
