"""Engine answers read and normalised: a JSON answer, or the engine's error as a gateway error."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import EngineError, EngineStatusError
from gateway.protocol.errors import ErrorResponse
from gateway.routing.table import Replica
from gateway.upstream import Upstream


async def post_answer(
    upstream: Upstream, replica: Replica, path: str, data: dict[str, Any]
) -> dict[str, Any]:
    """POST ``data`` to ``replica`` under its served name; the engine's JSON answer, or the
    normalised error (engine status, unreadable answer)."""
    reply = await upstream.post_json(
        replica.base_url, path, orjson.dumps({**data, "model": replica.served_name})
    )
    if reply.status != 200:
        raise engine_error(reply.status, reply.body)
    try:
        answer = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        raise EngineError("The engine sent an unreadable answer.") from None
    if not isinstance(answer, dict):
        raise EngineError("The engine sent an unreadable answer.")
    return answer


def engine_error(status: int, body: bytes) -> EngineStatusError:
    """Normalise an engine's error answer (vLLM uses integer codes and its own type names)."""
    message = "The engine rejected the request."
    param = None
    try:
        detail = ErrorResponse.model_validate(_error_dict(body)).error
        message, param = detail.message, detail.param
    except ValueError:
        pass
    if status >= 500:
        # Engine internals are not the client's business; its 4xx messages are about the request.
        message = "The engine failed to process the request."
        status = 503 if status == 503 else 502
    error = EngineStatusError(status, message, param=param)
    if status in (429, 503):
        error.retry_after = 1  # the engine is busy, not broken
    return error


def _error_dict(body: bytes) -> object:
    data = orjson.loads(body)
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        err = dict(data["error"])
        err["code"] = None if err.get("code") is None else str(err["code"])
        return {"error": err}
    if isinstance(data, dict) and "message" in data:  # some engines answer {"message": ...}
        return {"error": {"message": str(data["message"]), "type": "error"}}
    raise ValueError("not an error body")
