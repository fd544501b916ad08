"""A resolver that fails on demand, for the gateway processes of the DNS fault cells only.

Python imports ``sitecustomize`` at start-up from ``sys.path``; tests/faults/test_dns.py starts its
gateway with this folder on ``PYTHONPATH`` and ``OFFLOAD_FAULTS_RESOLVER`` naming a file. Names
listed in that file (read on every lookup) fail as they do when the resolver cannot answer (a DNS
server down or timing out): ``EAI_AGAIN``, "Temporary failure in name resolution", which no
hosts-file entry can produce. Every other lookup is the real one. Without the variable, nothing
is changed.

The gateway runs on uvloop, whose ``getaddrinfo`` calls libuv, not :func:`socket.getaddrinfo`: its
loops are made of a subclass that checks the file first (``socket.getaddrinfo`` is wrapped too, for
asyncio's own loop).
"""

from __future__ import annotations

import os
import socket
from typing import Any

_CONTROL = os.environ.get("OFFLOAD_FAULTS_RESOLVER")


def _check(host: Any) -> None:
    """Raise EAI_AGAIN when ``host`` is listed in the control file."""
    if _CONTROL is None:
        return
    try:
        with open(_CONTROL) as f:
            failing = f.read().split()
    except OSError:
        return
    if (host.decode() if isinstance(host, bytes) else host) in failing:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")


if _CONTROL:
    _real_getaddrinfo = socket.getaddrinfo

    def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        _check(host)
        return _real_getaddrinfo(host, *args, **kwargs)

    socket.getaddrinfo = _getaddrinfo

    try:
        import uvloop
    except ImportError:
        pass
    else:

        class _Loop(uvloop.Loop):  # type: ignore[misc]
            async def getaddrinfo(self, host: Any, *args: Any, **kwargs: Any) -> Any:
                _check(host)
                return await super().getaddrinfo(host, *args, **kwargs)

        uvloop.new_event_loop = _Loop
