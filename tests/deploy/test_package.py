"""`offload package`: the build context of an engine image with a model's weights inside, checked offline.

The command runs as an operator runs it (the installed console script); the context's Dockerfile must pass
hadolint, its labels and manifest must name the version and the weights' digest, the weights must be the
prepared model's bytes, and the engine command its ENV produces must be accepted by vLLM's own parser.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from engines.packaging import WEIGHTS_PATH, weights_digest
from gateway.settings import Settings
from tests.deploy.conftest import ROOT, dockerfile_env, load_entrypoint, run, tool
from tests.deploy.test_dockerfiles import instructions
from tests.deploy.test_engine_entrypoint import parse_with_vllm

ENGINE_DOCKERFILE = ROOT / "engines" / "vllm" / "Dockerfile"
SOURCE = "https://git.example.test/offload"


def offload(*args: str) -> Any:
    """Run the `offload` console script of this environment."""
    return run([str(Path(sys.executable).parent / "offload"), *args], timeout=600, cwd=ROOT)


def labels(path: Path) -> dict[str, str]:
    """The LABEL key="value" pairs of a Dockerfile."""
    found: dict[str, str] = {}
    for line in instructions(path):
        if line.startswith("LABEL "):
            for pair in shlex.split(line[len("LABEL ") :]):  # key="value", quoted as a shell would
                key, _, value = pair.partition("=")
                found[key] = value
    return found


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """`offload package smollm2 --version v1` (prepares the packaged model first if it is not yet)."""
    out = tmp_path_factory.mktemp("package") / "smollm2-v1"
    result = offload("package", "smollm2", "--version", "v1", "--out", str(out), "--source", SOURCE)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads(result.stdout)


def test_the_context_holds_a_dockerfile_the_weights_and_a_manifest(
    smollm2: tuple[Path, dict[str, Any]],
) -> None:
    out, printed = smollm2
    manifest = json.loads((out / "offload-package.json").read_text())

    assert {p.name for p in out.iterdir()} == {"Dockerfile", "model", "offload-package.json"}
    assert manifest["tag"] == "offload/model-smollm2:v1" == printed["tag"]
    assert (manifest["name"], manifest["version"], manifest["task"]) == ("smollm2", "v1", "chat")
    assert (out / "model" / "config.json").is_file() and (out / "model" / "model.safetensors").is_file()
    assert not (out / "model" / ".offload-prepared").exists()


def test_the_weights_are_the_prepared_models_bytes_and_the_digest_says_so(
    smollm2: tuple[Path, dict[str, Any]],
) -> None:
    out, printed = smollm2
    prepared = Settings().models_dir / "smollm2"

    assert weights_digest(out / "model") == weights_digest(prepared) == printed["weights_digest"]
    assert printed["weights_digest"].startswith("sha256:") and printed["bytes"] > 100_000_000
    # The digest must be able to differ: one byte changed in a copy changes it.
    copy = out.parent / "changed"
    copy.mkdir()
    (copy / "config.json").write_text((prepared / "config.json").read_text() + " ")
    assert weights_digest(copy) != weights_digest(prepared)


def test_every_file_of_the_weights_is_readable_by_the_images_engine_user_and_the_prepared_modes_stay(
    smollm2: tuple[Path, dict[str, Any]],
) -> None:
    """The image keeps the files' modes and its engine runs as uid 10001, not the packager: every weight
    file must be readable by others; one the prepared model keeps private is copied, not hard-linked."""
    out, _ = smollm2
    prepared = Settings().models_dir / "smollm2"
    for path in (out / "model").rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & stat.S_IROTH, f"{path.name} is not readable by the engine's user"
            source = (prepared / path.relative_to(out / "model")).resolve()
            if not source.stat().st_mode & stat.S_IROTH:
                assert not os.path.samefile(source, path), f"{path.name} shares the private file's mode"


def test_the_dockerfile_builds_on_the_engine_image_and_labels_the_version(
    smollm2: tuple[Path, dict[str, Any]],
) -> None:
    out, printed = smollm2
    dockerfile = out / "Dockerfile"
    found = labels(dockerfile)

    assert [i for i in instructions(dockerfile) if i.startswith(("ARG", "FROM"))] == [
        "ARG ENGINE_IMAGE=offload/vllm-engine:v0.32.0",
        "FROM ${ENGINE_IMAGE}",
    ]
    assert f"COPY model/ {WEIGHTS_PATH}/" in instructions(dockerfile)
    assert found["org.opencontainers.image.version"] == "v1"
    assert found["org.opencontainers.image.title"] == "offload/model-smollm2"
    assert found["org.opencontainers.image.source"] == SOURCE
    assert found["dev.offload.model"] == "smollm2"
    assert found["dev.offload.weights.digest"] == printed["weights_digest"]


def test_the_dockerfile_passes_hadolint(smollm2: tuple[Path, dict[str, Any]]) -> None:
    result = run([tool("hadolint"), "--no-color", str(smollm2[0] / "Dockerfile")], cwd=ROOT)

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_images_environment_starts_vllm_on_the_weights_inside(
    smollm2: tuple[Path, dict[str, Any]],
) -> None:
    entrypoint = load_entrypoint()
    # What the container sees: the engine image's ENV, then the packaged image's on top.
    env = {**dockerfile_env(ENGINE_DOCKERFILE), **dockerfile_env(smollm2[0] / "Dockerfile")}
    command = entrypoint.render(entrypoint.read_spec(env))
    misspelt = entrypoint.render(entrypoint.read_spec({**env, "OFFLOAD_ENGINE_EXTRA_ARGS": "--dtipe half"}))

    result = parse_with_vllm([command, misspelt])

    assert result.returncode == 0, result.stderr[-3000:]
    parsed, parsed_misspelt = json.loads(result.stdout.splitlines()[-1])
    assert "error" not in parsed, parsed
    assert "error" in parsed_misspelt  # the parser check can fail
    assert parsed["model"] == WEIGHTS_PATH
    assert parsed["served_model_name"] == ["smollm2-v1"]
    assert env["HF_HUB_OFFLINE"] == "1"


def test_an_embeddings_model_is_packaged_for_the_pooling_runner_with_its_symlinks_resolved(
    tmp_path: Path,
) -> None:
    out = tmp_path / "minilm"
    result = offload("package", "minilm", "--version", "2026.1", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    env = dockerfile_env(out / "Dockerfile")

    assert env["OFFLOAD_ENGINE_TASK"] == "embeddings"
    assert json.loads(result.stdout)["tag"] == "offload/model-minilm:2026.1"
    # The prepared model links into site-packages; `docker build` would send the links, not the weights.
    assert not [p for p in out.rglob("*") if p.is_symlink()]
    assert (out / "model" / "model.safetensors").stat().st_size > 1_000_000
    assert "org.opencontainers.image.source" not in labels(out / "Dockerfile")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["smollm2", "--version", "v 1"], "not a valid image tag"),
        (["no-such-model", "--version", "v1"], "neither a packaged model"),
        (["smollm2", "--version", "v1", "--image", "Offload/Chat"], "not a valid image repository"),
    ],
)
def test_bad_arguments_are_refused_with_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = offload("package", *args, "--out", str(tmp_path / "out"))

    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "out" / "Dockerfile").exists()


def test_a_package_is_never_overwritten(smollm2: tuple[Path, dict[str, Any]]) -> None:
    out = smollm2[0]
    before = os.stat(out / "Dockerfile").st_mtime_ns

    result = offload("package", "smollm2", "--version", "v2", "--out", str(out))

    assert result.returncode == 2 and "not empty" in result.stderr
    assert os.stat(out / "Dockerfile").st_mtime_ns == before


def test_a_model_directory_is_packaged_as_the_release_workflow_does(tmp_path: Path) -> None:
    # What `hf download` leaves: the weights, and a .cache of download metadata that must stay out.
    weights = tmp_path / "weights"
    (weights / ".cache" / "huggingface").mkdir(parents=True)
    (weights / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"]}')
    (weights / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (weights / ".cache" / "huggingface" / "download.lock").write_text("")
    out = tmp_path / "context"

    result = offload(
        "package", str(weights), "--name", "chat", "--version", "v3", "--task", "chat",
        "--image", "ghcr.io/acme/model-chat", "--engine-image", "ghcr.io/acme/vllm-engine:v0.32.0",
        "--out", str(out),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tag"] == "ghcr.io/acme/model-chat:v3"
    assert "ARG ENGINE_IMAGE=ghcr.io/acme/vllm-engine:v0.32.0" in instructions(out / "Dockerfile")
    assert dockerfile_env(out / "Dockerfile")["OFFLOAD_ENGINE_SERVED_NAME"] == "chat-v3"
    assert sorted(p.name for p in (out / "model").iterdir()) == ["config.json", "model.safetensors"]
    assert labels(out / "Dockerfile")["dev.offload.weights.digest"] == weights_digest(weights)
