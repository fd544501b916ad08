"""Pre-encoded SSE events of a chat completion stream, in vLLM's exact shape.

One :class:`ChunkEncoder` per request builds the constant head (id, created, model) once; each
token event is then a single bytes concatenation, so the simulator is never the bottleneck.
"""

from __future__ import annotations

import orjson

WORDS: tuple[str, ...] = (
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
    " a",
    " time",
    ".",
)
"""The generated text cycles through these "tokens"."""

DONE = b"data: [DONE]\n\n"

_TAIL_OPEN = b',"logprobs":null,"finish_reason":null}]}\n\n'
_CONTENT = tuple(b'{"content":' + orjson.dumps(word) + b"}" + _TAIL_OPEN for word in WORDS)
_ROLE = b'{"role":"assistant","content":""}' + _TAIL_OPEN


def text_of(tokens: int) -> str:
    """The full text of ``tokens`` generated tokens."""
    count = len(WORDS)
    return "".join(WORDS[i % count] for i in range(tokens))


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

    def token(self, choice: int, position: int) -> bytes:
        """A token event without a finish reason."""
        return self._heads[choice] + _CONTENT[position % len(_CONTENT)]

    def last(self, choice: int, position: int, finish_reason: str) -> bytes:
        """The last token of a choice, carrying its one ``finish_reason``."""
        word = orjson.dumps(WORDS[position % len(WORDS)])
        return (
            self._heads[choice]
            + b'{"content":'
            + word
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
