"""What the gateway may ask of the engines it runs itself (``offload run``).

A structural protocol: :class:`engines.control.LocalEngineControl` implements it, and the gateway
never imports the engines package. With ``offload serve`` (engines run elsewhere) there is none.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


# Runtime-checkable: Litestar checks the type of what it injects into a handler.
@runtime_checkable
class EngineControl(Protocol):
    """Lifecycle of locally supervised engines, addressed by base URL (replica) or name (admin)."""

    def can_start(self, base_url: str) -> bool:
        """True for an on-demand engine that is not running (it can be started for a request)."""
        ...

    async def ensure_running(self, base_url: str, timeout: float) -> bool:
        """Start the engine if needed and wait until it is healthy; False if it did not come up."""
        ...

    def begin(self, base_url: str) -> None:
        """A request went to this engine (an on-demand engine with requests never idles out)."""
        ...

    def end(self, base_url: str) -> None:
        """A request to this engine finished."""
        ...

    def describe(self) -> list[dict[str, Any]]:
        """Every engine: name, state, model, version, pid, uptime, restarts, last exit..."""
        ...

    async def act(self, name: str, action: str) -> None:
        """``start``, ``stop`` or ``restart`` one engine; KeyError for an unknown name."""
        ...

    def log_tail(self, name: str, lines: int) -> list[str]:
        """The last lines of an engine's log; KeyError for an unknown name."""
        ...
