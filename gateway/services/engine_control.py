"""What the gateway may ask of the engines it runs itself (``offload run``).

A structural protocol: :class:`engines.control.LocalEngineControl` implements it, and the gateway
never imports the engines package. With ``offload serve`` (engines run elsewhere) there is none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gateway.engine_usage import ProcessFigures
    from gateway.local_engines import EngineSpec


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


@runtime_checkable
class EngineSet(Protocol):
    """The set of local engines, changed by a configuration reload (:mod:`gateway.rollout`)."""

    def specs(self) -> dict[str, EngineSpec]:
        """The engines in the set now, by name (those set aside to drain are not in it)."""
        ...

    async def add(self, spec: EngineSpec) -> None:
        """Put an engine in the set and start it (no wait; on-demand ones wait for a request).
        One of the same name already there is set aside: it serves on until retired."""
        ...

    async def wait_ready(self, name: str, timeout: float) -> bool:
        """Wait until the engine ``name`` answers its health check; False on timeout."""
        ...

    async def retire(self, base_url: str, drain_timeout: float) -> int:
        """Take the engine at ``base_url`` out of the set, let its requests in flight finish (up to
        ``drain_timeout`` seconds), then stop it; returns the requests still in flight when stopped."""
        ...


@runtime_checkable
class EngineMeter(Protocol):
    """What the local engines use of the machine (:mod:`gateway.engine_usage`)."""

    def usage(self) -> Mapping[str, ProcessFigures]:
        """CPU, resident memory and GPU of each local engine now, by base URL. It blocks (it reads
        /proc and NVML): call it from a worker thread."""
        ...
