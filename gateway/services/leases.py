"""A request's hold on a replica: counted in flight while it runs, its outcome fed to the breaker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from gateway.errors import EngineConnectError, EngineError, EngineStatusError, EngineTimeoutError
from gateway.routing.breaker import Breakers
from gateway.routing.load import Loads
from gateway.routing.table import Replica
from gateway.services.engine_control import EngineControl


class Leases:
    """In-flight counts (ours, and the supervisor's for on-demand idling), breaker verdicts, and the
    streams to cut when a probe takes their replica down (:meth:`watch`)."""

    def __init__(
        self, breakers: Breakers, loads: Loads, engines: EngineControl | None, retry_after: int
    ) -> None:
        self._breakers = breakers
        self._loads = loads
        self._engines = engines
        self._retry_after = retry_after
        self._cuts: dict[str, set[Callable[[], None]]] = {}  # replica id -> cuts of its open streams
        breakers.on_probe_down(self._replica_down)

    def watch(self, replica: Replica, cut: Callable[[], None]) -> Callable[[], None]:
        """Call ``cut`` if a health probe takes ``replica`` down before the returned unwatch is called.

        For streams that can resume elsewhere: cutting their engine connection breaks them now,
        rather than after the stream idle timeout of an engine that went silent with it open.
        """
        cuts = self._cuts.setdefault(replica.id, set())
        cuts.add(cut)

        def unwatch() -> None:
            open_cuts = self._cuts.get(replica.id)
            if open_cuts is not None:
                open_cuts.discard(cut)
                if not open_cuts:
                    del self._cuts[replica.id]

        return unwatch

    def _replica_down(self, replica_id: str) -> None:
        for cut in self._cuts.pop(replica_id, ()):
            cut()

    def hold(self, replica: Replica) -> Callable[[], None]:
        """Count a stream in flight on ``replica`` until the returned release is called (once)."""
        self._loads.begin(replica.id)
        self._breakers.admit(replica.id)
        if self._engines is not None:
            self._engines.begin(replica.base_url)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._loads.end(replica.id)
                if self._engines is not None:
                    self._engines.end(replica.base_url)

        return release

    def succeeded(self, replica: Replica) -> None:
        """A stream finished well: the engine works."""
        self._breakers.success(replica.id)

    def failed(self, replica: Replica) -> None:
        """A stream broke at the engine's end."""
        self._breakers.failure(replica.id, unreachable=False)

    @contextmanager
    def calling(self, replica: Replica) -> Iterator[None]:
        """Count a call in flight and feed its outcome to the replica's circuit breaker."""
        # The counting is written out here and in hold(), not shared: this runs for every request.
        self._loads.begin(replica.id)
        self._breakers.admit(replica.id)
        if self._engines is not None:
            self._engines.begin(replica.base_url)
        try:
            yield
        except EngineConnectError as exc:
            self._breakers.failure(replica.id, unreachable=True)
            exc.retry_after = self._retry_after
            raise
        except (EngineError, EngineTimeoutError):
            self._breakers.failure(replica.id, unreachable=False)
            raise
        except EngineStatusError as exc:
            if exc.status >= 500:
                self._breakers.failure(replica.id, unreachable=False)
            else:
                self._breakers.success(replica.id)  # the engine works; the request was wrong
            raise
        except BaseException:
            self._breakers.abandoned(replica.id)  # cancelled (client left): no verdict on the engine
            raise
        else:
            self._breakers.success(replica.id)
        finally:
            self._loads.end(replica.id)
            if self._engines is not None:
                self._engines.end(replica.base_url)
