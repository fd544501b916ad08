"""What the supervisor reads off the operating system: ports, process groups, exit descriptions."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from engines.hostinfo import describe_exit, group_members, is_engine_group, port_free


def test_a_listening_port_is_not_free_and_a_closed_one_is() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_free("127.0.0.1", port) is False
    assert port_free("127.0.0.1", port) is True


def test_exit_descriptions_name_the_signal_or_the_status() -> None:
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(1) == "exit status 1"
    assert describe_exit(-200) == "killed by signal 200"


@pytest.fixture
def sleepers() -> Iterator[tuple[int, int]]:
    """Two process groups of their own: one whose command line says vllm, one that does not."""
    sleep = "import time; time.sleep(30)"
    engine = subprocess.Popen([sys.executable, "-c", sleep, "vllm-serve-lookalike"], start_new_session=True)
    other = subprocess.Popen([sys.executable, "-c", sleep, "something-else"], start_new_session=True)
    try:
        yield engine.pid, other.pid
    finally:
        for proc in (engine, other):
            proc.kill()
            proc.wait()


def test_process_groups_are_read_from_proc(sleepers: tuple[int, int]) -> None:
    engine, other = sleepers

    assert group_members(engine) == [engine]
    assert os.getpid() in group_members(os.getpgrp())
    assert is_engine_group(engine) is True
    assert is_engine_group(other) is False  # a recycled group id of something else is never signalled
