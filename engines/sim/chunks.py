"""Pre-encoded SSE events of a chat completion stream, in vLLM's exact shape.

One :class:`ChunkEncoder` per request builds the constant head (id, created, model) once; each
token event is then a single bytes concatenation, so the simulator is never the bottleneck.
"""

from __future__ import annotations

import orjson

from engines.sim.answer import TOKEN_CODES

DONE = b"data: [DONE]\n\n"

_TAIL_OPEN = b',"logprobs":null,"finish_reason":null}]}\n\n'
_CONTENT = tuple(b'{"content":' + orjson.dumps(word) + b"}" + _TAIL_OPEN for word in TOKEN_CODES)
_ROLE = b'{"role":"assistant","content":""}' + _TAIL_OPEN


class ChunkEncoder:
    """Encodes the events of one streamed chat completion (``data: ...\\n\\n`` bytes)."""

    __slots__ = ("_heads", "_usage_head")

    def __init__(self, request_id: str, created: int, model: str, choices: int) -> None:
        common = (
            b'data: {"id":'
            + orjson.dumps(request_id)
            + b',"object":"chat.completion.chunk","created":'
            + str(created).encode()
            + b',"model":'
            + orjson.dumps(model)
        )
        self._heads = tuple(
            common + b',"choices":[{"index":' + str(i).encode() + b',"delta":' for i in range(choices)
        )
        self._usage_head = common + b',"choices":[],"usage":'

    def role(self, choice: int) -> bytes:
        """The first event of a choice: ``delta: {"role": "assistant", "content": ""}``."""
        return self._heads[choice] + _ROLE

    def token(self, choice: int, code: int) -> bytes:
        """A token event without a finish reason: the token of ``code`` (pre-encoded)."""
        return self._heads[choice] + _CONTENT[code]

    def piece(self, choice: int, text: str) -> bytes:
        """A token event of any text, without a finish reason (the rest of a token a continuation
        was given the beginning of)."""
        return self._heads[choice] + b'{"content":' + orjson.dumps(text) + b"}" + _TAIL_OPEN

    def last(self, choice: int, text: str, finish_reason: str) -> bytes:
        """The last event of a choice, carrying its one ``finish_reason`` (``text`` may be empty: a
        continuation of an answer that had already ended)."""
        return (
            self._heads[choice]
            + b'{"content":'
            + orjson.dumps(text)
            + b'},"logprobs":null,"finish_reason":"'
            + finish_reason.encode()
            + b'","stop_reason":null}]}\n\n'
        )

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The final usage event (``choices: []``), sent only when the client asked for it."""
        usage = {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens,
        }
        return self._usage_head + orjson.dumps(usage) + b"}\n\n"
