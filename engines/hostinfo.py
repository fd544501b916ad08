"""What the supervisor asks of the operating system about engine processes: free ports, the
members of a process group (from ``/proc``), whether a group is still a vLLM engine's, and how a
process ended."""

from __future__ import annotations

import signal
import socket
from pathlib import Path


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` (an engine could bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def is_engine_group(pgid: int) -> bool:
    """True when group ``pgid`` still holds vLLM processes (the API server, or the EngineCore and
    Worker it left behind); a recycled id of something else is never signalled."""
    for pid in group_members(pgid):
        try:
            if b"vllm" in Path(f"/proc/{pid}/cmdline").read_bytes().lower():
                return True
        except OSError:
            continue
    return False


def describe_exit(code: int) -> str:
    """``-9`` -> ``"killed by SIGKILL"`` (the OOM killer's signal), ``1`` -> ``"exit status 1"``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
