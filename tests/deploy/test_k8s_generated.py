"""deploy/models.yaml drives the engine manifests: the committed ones are what deploy/k8s/generate.py writes,
a new version is one line, and the release overlay runs every version on its packaged image."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from engines.packaging import WEIGHTS_PATH
from tests.deploy.conftest import DEPLOY, K8S, dockerfile_env, load_entrypoint, render_kustomization, run
from tests.deploy.test_k8s import (
    configmap_config,
    containers,
    engine_deployments,
    engine_urls,
    named,
    validate,
)

Manifest = dict[str, Any]
ROOT = DEPLOY.parent
GENERATOR = K8S / "generate.py"


def generator() -> ModuleType:
    """deploy/k8s/generate.py as a module (a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("offload_k8s_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def generate(deploy: Path, *args: str) -> Any:
    return run([sys.executable, str(deploy / "k8s" / "generate.py"), *args])


@pytest.fixture(scope="module")
def release() -> list[Manifest]:
    return render_kustomization(DEPLOY / "release")


def test_the_committed_manifests_are_what_the_generator_writes() -> None:
    result = generate(DEPLOY, "--check")

    assert result.returncode == 0, f"run `python deploy/k8s/generate.py`:\n{result.stderr}"


def test_each_line_of_models_yaml_is_one_engine_deployment(rendered: list[Manifest]) -> None:
    versions, _ = generator().load()

    assert {d["metadata"]["name"] for d in engine_deployments(rendered)} == {v.deployment for v in versions}
    for version in versions:
        deployment = named(rendered, "Deployment", version.deployment)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert (labels["offload.dev/model"], labels["offload.dev/version"]) == (version.name, version.version)


def test_the_gateway_config_routes_to_every_listed_version_and_no_other(rendered: list[Manifest]) -> None:
    versions, _ = generator().load()
    routed = {
        (url.split("//")[-1].split(".")[0], served)
        for _, served, url in engine_urls(configmap_config(rendered)[0])
    }

    assert routed == {(v.deployment, v.deployment) for v in versions}


def test_a_new_version_is_one_line(tmp_path: Path) -> None:
    deploy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, deploy, ignore=shutil.ignore_patterns("__pycache__"))
    models = deploy / "models.yaml"
    models.write_text(
        models.read_text().replace(
            "\n\n# Resources",
            "\n  - {name: chat, version: v3, model: Qwen/Qwen3-4B, replicas: 2}\n\n# Resources",
        )
    )
    assert generate(deploy, "--check").returncode == 1  # the check can fail: the new line is not yet written

    assert generate(deploy).returncode == 0
    base = render_kustomization(deploy / "k8s")
    packaged = render_kustomization(deploy / "release")

    deployment = named(base, "Deployment", "chat-v3")
    assert deployment["spec"]["replicas"] == 2
    env = {e["name"]: e.get("value") for e in containers(deployment)[0]["env"]}
    assert (env["OFFLOAD_ENGINE_MODEL"], env["OFFLOAD_ENGINE_SERVED_NAME"]) == ("Qwen/Qwen3-4B", "chat-v3")
    assert named(base, "Service", "chat-v3")["spec"]["clusterIP"] == "None"
    assert containers(named(packaged, "Deployment", "chat-v3"))[0]["image"] == "offload/model-chat:v3"
    assert validate(tmp_path, base) == ""
    # And removing the line removes its files.
    models.write_text(
        models.read_text().replace("  - {name: chat, version: v3, model: Qwen/Qwen3-4B, replicas: 2}\n", "")
    )
    assert generate(deploy).returncode == 0
    assert not (deploy / "k8s" / "engines" / "chat-v3.yaml").exists()
    assert generate(deploy, "--check").returncode == 0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{name: Chat, version: v3, model: m}", "not a Kubernetes name"),
        ("{name: chat, version: v1, model: m}", "listed twice"),
        ("{name: chat, version: v3, model: m, task: rerank}", "task 'rerank'"),
        ("{name: chat, version: v3, modle: m}", "unexpected keyword argument 'modle'"),
    ],
)
def test_an_invalid_line_is_refused_naming_it(tmp_path: Path, line: str, message: str) -> None:
    deploy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, deploy, ignore=shutil.ignore_patterns("__pycache__"))
    models = deploy / "models.yaml"
    models.write_text(models.read_text().replace("\n\n# Resources", f"\n  - {line}\n\n# Resources"))

    result = generate(deploy)

    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_the_release_overlay_runs_each_version_on_its_packaged_image(
    release: list[Manifest], tmp_path: Path
) -> None:
    versions, _ = generator().load()
    engine_env = dockerfile_env(ROOT / "engines" / "vllm" / "Dockerfile")

    assert validate(tmp_path, release) == ""
    for version in versions:
        (vllm,) = containers(named(release, "Deployment", version.deployment))
        env = {e["name"]: e["value"] for e in vllm["env"] if "value" in e}
        assert vllm["image"] == f"offload/model-{version.name}:{version.version}"
        assert env["OFFLOAD_ENGINE_MODEL"] == WEIGHTS_PATH
        spec = load_entrypoint().read_spec({**engine_env, **env})
        assert spec["SERVED_NAME"] == version.deployment


def test_the_release_overlay_names_the_registrys_images(tmp_path: Path) -> None:
    deploy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, deploy, ignore=shutil.ignore_patterns("__pycache__"))

    assert generate(deploy, "--registry", "ghcr.io/acme", "--gateway-tag", "v9.9.9").returncode == 0
    images = {
        c["image"]
        for d in render_kustomization(deploy / "release")
        if d["kind"] == "Deployment"
        for c in containers(d)
    }

    assert "ghcr.io/acme/gateway:v9.9.9" in images
    assert "ghcr.io/acme/model-chat:v1" in images and "ghcr.io/acme/model-embeddings:v1" in images
    assert not [i for i in images if i.startswith("offload/")]


def test_the_matrix_lists_every_version_for_the_release_workflow() -> None:
    result = generate(DEPLOY, "--matrix")
    versions, _ = generator().load()

    assert result.returncode == 0, result.stderr
    matrix = json.loads(result.stdout)
    assert [(m["name"], m["version"], m["model"], m["task"]) for m in matrix] == [
        (v.name, v.version, v.model, v.task) for v in versions
    ]
