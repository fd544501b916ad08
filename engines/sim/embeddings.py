"""``POST /v1/embeddings``: deterministic unit vectors derived from each input.

The same input always gives the same vector (a SHAKE-256 stream of the input, centred and
normalised), so tests can compare answers across calls, replicas and encodings. ``float`` values
are exactly the float32 numbers that ``base64`` carries (little-endian float32, as OpenAI sends).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import random
import struct
import time
import uuid
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from engines.sim.config import SimConfig
from engines.sim.engine import FINISH_ABORT, FINISH_STOP, SimEngine
from engines.sim.errors import SimError, error_response
from engines.sim.faults import BrokenAnswer, unless_disconnected
from engines.sim.intake import positive_int, take_in

_SCALE = 1.0 / 4294967296.0


def embed(key: bytes, dims: int) -> tuple[float, ...]:
    """A deterministic unit vector of ``dims`` float32 values for ``key``."""
    raw = struct.unpack(f"<{dims}I", hashlib.shake_256(key).digest(4 * dims))
    vector = [x * _SCALE - 0.5 for x in raw]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return struct.unpack(f"<{dims}f", struct.pack(f"<{dims}f", *(v / norm for v in vector)))


def _inputs(value: Any) -> list[tuple[bytes, int]]:
    """(hash key, token count) for each input: a string, strings, token ids, or lists of ids."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise SimError("'input' must be a string, a list of strings or token ids, non-empty.", param="input")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        value = [value]
    keys: list[tuple[bytes, int]] = []
    for item in value:
        if isinstance(item, str):
            keys.append((b"s:" + item.encode(), max(1, (len(item) + 3) // 4)))
        elif isinstance(item, list) and item and all(isinstance(t, int) for t in item):
            keys.append((b"t:" + ",".join(map(str, item)).encode(), len(item)))
        else:
            raise SimError("Each input must be a string or a non-empty list of token ids.", param="input")
    return keys


class EmbeddingsHandler:
    """The embeddings endpoint of one simulated engine."""

    def __init__(self, config: SimConfig, engine: SimEngine, rng: random.Random) -> None:
        self._config = config
        self._engine = engine
        self._rng = rng

    async def handle(self, request: Request) -> Response:
        try:
            intake = await take_in(request, self._config, self._rng)
            body = intake.body
            keys = _inputs(body.get("input"))
            encoding = body.get("encoding_format") or "float"
            if encoding not in ("float", "base64"):
                raise SimError("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
            dims = positive_int(body, "dimensions", self._config.embedding_dims) or 1
            if dims > self._config.embedding_dims:
                raise SimError(
                    f"'dimensions' must be at most {self._config.embedding_dims}.", param="dimensions"
                )
        except SimError as exc:
            return error_response(exc)
        answer = await unless_disconnected(
            request,
            self._answer(
                intake.model, keys, encoding, dims, intake.knobs.ttft, intake.knobs.reset_after is not None
            ),
        )
        if answer is None:
            return Response(status_code=499)
        if isinstance(answer, Response):
            return answer
        return Response(answer, media_type="application/json")

    async def _answer(
        self, model: str, keys: list[tuple[bytes, int]], encoding: str, dims: int, delay: float, reset: bool
    ) -> bytes | Response:
        engine = self._engine
        await engine.admit()
        tokens = sum(count for _, count in keys)
        engine.kv_tokens += tokens
        engine.prompt_tokens_total += tokens
        finish = FINISH_ABORT
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            if reset:
                return BrokenAnswer(reset=True)
            full = self._config.embedding_dims
            data = []
            for index, (key, _) in enumerate(keys):
                vector = embed(key, full)
                if dims < full:  # matryoshka-style truncation, renormalised
                    vector = _renormalised(vector[:dims])
                value: Any = (
                    base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
                    if encoding == "base64"
                    else vector
                )
                data.append({"index": index, "object": "embedding", "embedding": value})
            finish = FINISH_STOP
            return orjson.dumps(
                {
                    "id": f"embd-{uuid.uuid4().hex}",
                    "object": "list",
                    "created": int(time.time()),
                    "model": model,
                    "data": data,
                    "usage": {
                        "prompt_tokens": tokens,
                        "total_tokens": tokens,
                        "completion_tokens": 0,
                        "prompt_tokens_details": None,
                    },
                }
            )
        finally:
            engine.release(tokens, 0, finish)


def _renormalised(vector: tuple[float, ...]) -> tuple[float, ...]:
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    dims = len(vector)
    return struct.unpack(f"<{dims}f", struct.pack(f"<{dims}f", *(v / norm for v in vector)))
