"""The gateway's listening sockets: the Unix socket's file is removed at exit only while it is ours."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gateway import serving
from gateway.serving import ListenError, listeners, unix_listener


def test_the_socket_file_is_removed_at_exit(tmp_path: Path) -> None:
    path = tmp_path / "offload.sock"
    with unix_listener(path) as sock:
        assert (path.stat().st_mode & 0o777) == 0o660
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
    assert sock.fileno() == -1 and not path.exists()


def test_a_socket_file_another_server_put_in_its_place_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "offload.sock"
    with socket.socket(socket.AF_UNIX) as other:
        with unix_listener(path):
            path.unlink()
            other.bind(str(path))  # another server's socket at the same path now
        assert path.exists()


def test_the_tcp_socket_is_closed_when_the_unix_one_cannot_be_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "offload.sock"
    with listeners("127.0.0.1", 0, path) as (tcp, uds):
        assert tcp.getsockname()[0] == "127.0.0.1" and uds.getsockname() == str(path)
    assert tcp.fileno() == -1 and uds.fileno() == -1 and not path.exists()

    bound: list[socket.socket] = []
    bind_tcp = serving.bind_tcp
    monkeypatch.setattr(serving, "bind_tcp", lambda *a: bound.append(bind_tcp(*a)) or bound[-1])
    path.write_text("not a socket")
    with pytest.raises(ListenError, match="not a socket"), listeners("127.0.0.1", 0, path):
        pass
    assert len(bound) == 1 and bound[0].fileno() == -1
