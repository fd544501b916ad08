"""The Unix socket end to end against the engine simulator: a real gateway process with
``OFFLOAD_SERVER__UDS`` set, the official OpenAI SDK through httpx's Unix-socket transport."""

from __future__ import annotations

import signal
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.config import OffloadConfig
from gateway.main import exposure_problem
from gateway.settings import ServerSettings, Settings
from tests.integration.servers import GatewayProcess, wait_until
from tests.sim.conftest import RunningSim


def sdk(path: Path) -> openai.OpenAI:
    """The OpenAI SDK talking HTTP over the Unix socket at ``path`` (the host name is unused)."""
    transport = httpx.HTTPTransport(uds=str(path))
    return openai.OpenAI(
        base_url="http://offload/v1",
        api_key="unused",
        max_retries=0,
        http_client=httpx.Client(transport=transport, timeout=10),
    )


def answers(path: Path) -> bool:
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path))) as client:
            return client.get("http://offload/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def models(sim: RunningSim) -> list[dict]:
    engine = {"url": sim.base_url, "served_name": "sim"}
    return [
        {"name": "chat", "task": "chat", "engine": engine},
        {"name": "emb", "task": "embeddings", "engine": engine},
    ]


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "offload.sock"  # (well under the 108-byte limit of a socket path)


@pytest.fixture
def beside_tcp(sim: RunningSim, tmp_path: Path, sock_path: Path) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path, models(sim), {"OFFLOAD_SERVER__UDS": str(sock_path)}).start()
    yield gw
    gw.stop()


def test_the_sdk_chats_streams_and_embeds_over_the_socket(
    beside_tcp: GatewayProcess, sock_path: Path
) -> None:
    client = sdk(sock_path)
    answer = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert answer.choices[0].message.content and answer.usage and answer.usage.completion_tokens == 4

    chunks = list(
        client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    assert chunks[-1].usage is not None and not chunks[-1].choices

    embedded = client.embeddings.create(model="emb", input=["one", "two"])  # base64, the SDK's default
    assert [len(e.embedding) for e in embedded.data] == [32, 32]

    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )
    assert raw.headers["x-offload-model"] == "chat"
    assert httpx.get(beside_tcp.base_url + "/health").status_code == 200  # TCP still served beside it


def test_the_socket_is_mode_0660_and_removed_on_sigterm(beside_tcp: GatewayProcess, sock_path: Path) -> None:
    assert stat.S_ISSOCK(sock_path.lstat().st_mode)
    assert stat.S_IMODE(sock_path.lstat().st_mode) == 0o660
    assert beside_tcp.proc is not None
    beside_tcp.proc.send_signal(signal.SIGTERM)
    assert beside_tcp.proc.wait(timeout=15) == 0
    assert not sock_path.exists()


def test_the_socket_alone_and_a_stale_socket_file_replaced(
    sim: RunningSim, tmp_path: Path, sock_path: Path
) -> None:
    stale = socket.socket(socket.AF_UNIX)  # a killed run's socket file: there, but nobody listening
    stale.bind(str(sock_path))
    stale.close()
    assert stat.S_ISSOCK(sock_path.lstat().st_mode) and not answers(sock_path)

    gw = GatewayProcess(
        tmp_path, models(sim), {"OFFLOAD_SERVER__UDS": str(sock_path), "OFFLOAD_SERVER__TCP": "false"}
    )
    gw.start(tcp=False)
    try:
        wait_until(lambda: answers(sock_path), 30, what="the gateway on its socket")
        assert sdk(sock_path).models.list().data[0].id == "chat"
        with pytest.raises(httpx.ConnectError):
            httpx.get(gw.base_url + "/health")  # no TCP listener
    finally:
        gw.stop()
    assert not sock_path.exists()


def _serve_fails(sim: RunningSim, tmp_path: Path, sock_path: Path) -> str:
    gw = GatewayProcess(tmp_path, models(sim), {"OFFLOAD_SERVER__UDS": str(sock_path)})
    done = gw.run_to_exit()
    assert done.returncode != 0
    return done.stderr


def test_a_path_that_is_not_a_socket_is_refused_and_kept(
    sim: RunningSim, tmp_path: Path, sock_path: Path
) -> None:
    sock_path.write_text("precious")
    stderr = _serve_fails(sim, tmp_path, sock_path)
    assert f"offload: refusing to replace {sock_path}: it exists and is not a socket" in stderr
    assert "Traceback" not in stderr
    assert sock_path.read_text() == "precious"


def test_a_socket_in_use_is_refused(beside_tcp: GatewayProcess, tmp_path: Path, sock_path: Path) -> None:
    stderr = _serve_fails(RunningSim("http://127.0.0.1:9", None), tmp_path, sock_path)  # type: ignore[arg-type]
    assert f"{sock_path} is in use" in stderr
    assert answers(sock_path)  # the first gateway still serves on it


def test_the_socket_alone_is_not_exposure() -> None:
    keyless = OffloadConfig.model_validate(
        {"models": [{"name": "chat", "task": "chat", "engine": {"url": "http://e"}}]}
    )
    anywhere = {"host": "0.0.0.0", "uds": Path("/run/offload/offload.sock")}
    socket_only = Settings(server=ServerSettings(**anywhere, tcp=False))
    assert exposure_problem(socket_only, keyless) is None
    assert exposure_problem(Settings(server=ServerSettings(**anywhere)), keyless) is not None
    with_grpc = Settings(server=ServerSettings(**anywhere, tcp=False, grpc_port=50051))
    assert "refusing to serve on 0.0.0.0" in (exposure_problem(with_grpc, keyless) or "")


def test_tcp_off_needs_a_socket() -> None:
    with pytest.raises(ValueError, match="tcp=false needs uds"):
        ServerSettings(tcp=False)
