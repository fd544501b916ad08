"""``/admin/engines``: the locally supervised engines (``offload run`` only).

Not part of the OpenAI API. It listens where the gateway listens (loopback by default); it will sit
behind the admin key once the gateway has authentication.
"""

from __future__ import annotations

from typing import Any

import orjson
from litestar import Controller, Response, get, post

from gateway.engine_usage import usage_fields
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.monitor import HealthMonitor
from gateway.protocol import paths
from gateway.services.engine_control import EngineControl


def _need(control: EngineControl | None) -> EngineControl:
    if control is None:
        raise NotFoundError("This gateway does not run engines itself (started with `offload serve`).")
    return control


class EnginesController(Controller):
    """List engines, start/stop/restart one, read its log."""

    path = paths.ADMIN_ENGINES

    @get()
    async def list_engines(self, engines: EngineControl | None, monitor: HealthMonitor) -> Response[bytes]:
        """Every engine with state, pid, uptime, restarts, in-flight requests, and its usage as last
        sampled (:mod:`gateway.engine_usage`: CPU, memory, GPU, what the engine reports)."""
        rows = _need(engines).describe()
        reported = {f.url: f.engine for f in monitor.engine_figures()}
        for row in rows:
            if "url" in row:  # an engine that is not routed to yet (starting) has its usage too
                row.update(usage_fields(monitor.local_usage(row["url"]), reported.get(row["url"])))
        return _json({"object": "list", "data": rows})

    @post("/{name:str}/{action:str}", status_code=200)
    async def act(self, name: str, action: str, engines: EngineControl | None) -> Response[bytes]:
        """``start``, ``stop`` or ``restart`` the engine ``name``."""
        control = _need(engines)
        if action not in ("start", "stop", "restart"):
            raise InvalidRequestError(
                f"Unknown action '{action}': use start, stop or restart.", param="action"
            )
        try:
            await control.act(name, action)
        except KeyError:
            raise NotFoundError(f"No engine named '{name}'.") from None
        return _json({"name": name, "action": action, "ok": True})

    @get("/{name:str}/logs")
    async def logs(self, name: str, engines: EngineControl | None, lines: int = 50) -> Response[bytes]:
        """The last ``lines`` lines of the engine's log."""
        try:
            tail = _need(engines).log_tail(name, max(1, min(lines, 1000)))
        except KeyError:
            raise NotFoundError(f"No engine named '{name}'.") from None
        return _json({"name": name, "lines": tail})


def _json(body: dict[str, Any]) -> Response[bytes]:
    return Response(orjson.dumps(body), media_type="application/json")
