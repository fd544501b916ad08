"""Graceful drain on SIGTERM, in three steps:

1. ``/ready`` answers 503 at once, while requests are still served for ``drain_grace`` seconds, so
   load balancers and Kubernetes endpoints take the gateway out before it stops listening;
2. the listener closes; requests and streams in flight go on, for up to ``drain_timeout`` seconds;
3. streams still open then get an in-band error and ``[DONE]`` (never a cut connection), which
   closes their engine requests.

The server drives the steps (:mod:`gateway.main`); the readiness route and the stream handler read
this state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Drain:
    """Where the gateway is in its shutdown, and the streams that must end if it runs out of time."""

    def __init__(self) -> None:
        self.draining = False
        """Step 1 has begun: not ready any more."""
        self.expired = False
        """Step 3: open streams are being ended."""
        self._streams: set[asyncio.Task[object]] = set()
        self._on_begin: list[Callable[[], None]] = []

    def on_begin(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the drain begins (another door's readiness: gRPC health)."""
        self._on_begin.append(callback)

    def begin(self) -> None:
        """Stop being ready (requests are still served)."""
        self.draining = True
        for callback in self._on_begin:
            callback()

    def track(self, task: asyncio.Task[object]) -> None:
        """A stream is being relayed by ``task``."""
        self._streams.add(task)

    def untrack(self, task: asyncio.Task[object]) -> None:
        """That stream has ended."""
        self._streams.discard(task)

    @property
    def open_streams(self) -> int:
        """Streams being relayed now."""
        return len(self._streams)

    def expire(self) -> None:
        """Out of time: interrupt every open stream (each ends itself with an error and ``[DONE]``)."""
        self.expired = True
        for task in list(self._streams):
            task.cancel()
