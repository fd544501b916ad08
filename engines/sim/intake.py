"""What every simulated inference request starts with: JSON body, served model, knobs, error dice."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request

from engines.sim.config import KnobError, Knobs, SimConfig, resolve
from engines.sim.errors import SimError


@dataclass(frozen=True, slots=True)
class Intake:
    """A parsed request: its body, the served name it asked for, and its knobs."""

    body: dict[str, Any]
    model: str
    knobs: Knobs


async def take_in(request: Request, config: SimConfig, rng: random.Random) -> Intake:
    """Parse and check a request, then roll the error-rate dice. Raises :class:`SimError`."""
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SimError(f"Invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise SimError("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise SimError("Field 'model' is required.", param="model")
    if model not in config.served_names:
        raise SimError(f"The model `{model}` does not exist.", status=404)
    try:
        knobs = resolve(config.knobs, request.headers.raw, body.get("sim"))
    except KnobError as exc:
        raise SimError(str(exc), param=exc.name) from None
    if knobs.error_rate > 0 and rng.random() < knobs.error_rate:
        raise SimError("Simulated engine error.", status=knobs.error_status)
    return Intake(body, model, knobs)


def positive_int(body: dict[str, Any], name: str, default: int | None = None) -> int | None:
    """An optional integer field >= 1 of the body."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SimError(f"'{name}' must be an integer >= 1.", param=name)
    return value
