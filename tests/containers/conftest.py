"""The compose stack in real containers: Podman runs the images `make images` builds, podman-compose runs
deploy/compose.yaml's cpu profile. Everything here is skipped, with the reason, where Podman,
podman-compose or the images are missing (`make test-containers` installs and builds them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from gateway.keys import hash_key
from tests.integration.servers import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
PROFILE = "cpu"
GATEWAY_SERVICE = "gateway-cpu"
ENGINE_SERVICES = {"chat": "chat-v1-cpu", "embeddings": "embeddings-cpu"}
GATEWAY_IMAGE = "offload/gateway:0.1.0"
ENGINE_IMAGE = "offload/vllm-cpu-engine:0.32.0"
MODEL_IMAGES = ("offload/model-smollm2:v1", "offload/model-minilm:v1")
# Two vLLM engines starting side by side on 2 cores: about 1-2 minutes; bounded well above that.
STACK_START_TIMEOUT = 420.0
KEY = "ofl-containers-test"


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``podman ARGS`` and return its result (raising on failure when ``check``)."""
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=check)


def podman_compose() -> str | None:
    """podman-compose: OFFLOAD_PODMAN_COMPOSE, make's virtualenv under build/, or PATH."""
    for candidate in (
        os.environ.get("OFFLOAD_PODMAN_COMPOSE"),
        str(ROOT / "build" / "containers" / "venv" / "bin" / "podman-compose"),
        shutil.which("podman-compose"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def missing_images(*images: str) -> list[str]:
    """The images not in Podman's local storage."""
    return [i for i in images if podman("image", "exists", i, check=False).returncode != 0]


def require_podman(*images: str) -> None:
    """Skip the calling test (or fixture) unless Podman runs here and ``images`` are built."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (make container-tools installs it)")
    missing = missing_images(*images)
    if missing:
        pytest.skip(f"images not built: {', '.join(missing)} (run make images)")


@dataclass
class Stack:
    """A running compose project: its gateway's URL, an API key, and how to reach its containers."""

    project: str
    base_url: str
    env: dict[str, str]
    compose: list[str]
    start_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def client(self, **kwargs: object) -> OpenAI:
        """The official OpenAI SDK pointed at the gateway container (no retries: tests see each answer)."""
        return OpenAI(base_url=self.base_url + "/v1", api_key=KEY, max_retries=0, **kwargs)  # type: ignore[arg-type]

    def container(self, service: str) -> str:
        """The name of ``service``'s container (podman-compose: PROJECT_SERVICE_1)."""
        found = podman(
            "ps",
            "-a",
            "--filter",
            f"label=io.podman.compose.project={self.project}",
            "--filter",
            f"label=com.docker.compose.service={service}",
            "--format",
            "{{.Names}}",
        ).stdout.split()
        assert len(found) == 1, (service, found)
        return found[0]

    def inspect(self, service: str) -> dict[str, object]:
        """``podman inspect`` of the service's container."""
        return dict(json.loads(podman("inspect", self.container(service)).stdout)[0])

    def ready(self) -> dict[str, bool]:
        """The gateway's /ready models (empty while it does not answer)."""
        try:
            return dict(httpx.get(self.base_url + "/ready", timeout=5).json().get("models", {}))
        except (httpx.HTTPError, ValueError):
            return {}

    def logs(self) -> str:
        """The last lines of every container's log, for a failure message."""
        out = []
        for service in (GATEWAY_SERVICE, *ENGINE_SERVICES.values()):
            with_logs = podman("logs", "--tail", "15", self.container(service), check=False)
            out.append(f"--- {service}\n{with_logs.stdout}{with_logs.stderr}")
        return "\n".join(out)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The cpu profile up once (gateway + one engine container per model version), on a free port."""
    require_podman(GATEWAY_IMAGE, *MODEL_IMAGES)
    compose_bin = podman_compose()
    if compose_bin is None:
        pytest.skip("podman-compose is not installed (make container-tools installs it)")
    keys = tmp_path_factory.mktemp("containers") / "keys.yaml"
    keys.write_text(f"keys:\n  - {{name: tests, hash: '{hash_key(KEY)}'}}\n")
    keys.chmod(0o644)  # read by the gateway's own user inside the container
    keys.parent.chmod(0o755)
    port = free_port()
    project = f"offload-tests-{os.getpid()}"
    env = {
        **os.environ,
        "OFFLOAD_BIND": "127.0.0.1",
        "OFFLOAD_PORT": str(port),
        "OFFLOAD_KEYS_FILE": str(keys),
    }
    compose = [compose_bin, "--project-name", project, "-f", str(COMPOSE), "--profile", PROFILE]
    start = time.monotonic()
    up = subprocess.run(
        [*compose, "up", "-d"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    result = Stack(project, f"http://127.0.0.1:{port}", env, compose)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        try:
            wait_until(
                lambda: result.ready() == {"chat": True, "embeddings": True},
                STACK_START_TIMEOUT,
                interval=2,
                what="the gateway to see both engines healthy",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{result.logs()}") from None
        result.start_seconds = time.monotonic() - start
        yield result
    finally:
        subprocess.run(
            [*compose, "down", "-t", "10"], env=env, capture_output=True, text=True, timeout=180, check=False
        )
