"""The built images: the gateway image is small, runs as a non-root user, has no compiler and none of the
engine's libraries, and checks /health; each model image is the engine image with one model's weights."""

from __future__ import annotations

import json

import pytest

from tests.containers.conftest import ENGINE_IMAGE, GATEWAY_IMAGE, MODEL_IMAGES, podman, require_podman

# The slim Python base is ~130 MB (the local Debian base ~250 MB) and the gateway's wheels ~80 MB.
GATEWAY_MAX_BYTES = 450 * 1024 * 1024


def image(name: str) -> dict[str, object]:
    return dict(json.loads(podman("image", "inspect", name).stdout)[0])


def run_in(name: str, *command: str) -> str:
    """Run ``command`` in a throwaway container of ``name`` (its entrypoint replaced) and return stdout."""
    result = podman("run", "--rm", "--network", "none", "--entrypoint", command[0], name, *command[1:])
    return result.stdout


def test_gateway_image_is_small_non_root_and_checks_health(record_property: pytest.RecordProperty) -> None:
    require_podman(GATEWAY_IMAGE)
    info = image(GATEWAY_IMAGE)
    config = info["Config"]
    assert isinstance(config, dict)
    size = int(str(info["Size"]))
    record_property("gateway_image_bytes", size)

    assert size < GATEWAY_MAX_BYTES, f"{size / 2**20:.0f} MiB"
    assert config["User"].split(":")[0] not in ("", "0", "root")
    assert "/health" in " ".join(info["Healthcheck"]["Test"])  # type: ignore[index]
    assert run_in(GATEWAY_IMAGE, "id", "-u").strip() == "10001"


def test_gateway_image_has_no_engine_libraries_and_no_compiler() -> None:
    require_podman(GATEWAY_IMAGE)
    probe = (
        "import importlib.util, shutil;"
        "print([m for m in ('vllm', 'torch', 'transformers') if importlib.util.find_spec(m)]);"
        "print([c for c in ('gcc', 'cc', 'g++', 'clang', 'make') if shutil.which(c)]);"
        "import gateway, litestar; print('ok')"
    )

    assert run_in(GATEWAY_IMAGE, "python", "-c", probe).split("\n")[:3] == ["[]", "[]", "ok"]


def test_the_probe_above_can_see_an_engine_library() -> None:
    # The check above must be able to fail: the same probe finds torch in the engine image.
    require_podman(ENGINE_IMAGE)
    probe = "import importlib.util; print(bool(importlib.util.find_spec('torch')))"

    assert run_in(ENGINE_IMAGE, "python", "-c", probe).strip() == "True"


@pytest.mark.parametrize("name", MODEL_IMAGES)
def test_model_image_is_the_engine_image_plus_one_models_weights(
    name: str, record_property: pytest.RecordProperty
) -> None:
    require_podman(ENGINE_IMAGE, name)
    model, engine = image(name), image(ENGINE_IMAGE)
    labels = model["Labels"]
    assert isinstance(labels, dict)
    env = dict(v.split("=", 1) for v in model["Config"]["Env"])  # type: ignore[index]
    record_property(f"{name}_bytes", model["Size"])
    record_property("engine_image_bytes", engine["Size"])

    # every layer of the engine image, then the weights on top
    assert model["RootFS"]["Layers"][: len(engine["RootFS"]["Layers"])] == engine["RootFS"]["Layers"]  # type: ignore[index]
    assert labels["org.opencontainers.image.version"] == name.rsplit(":", 1)[1]
    assert labels["dev.offload.weights.digest"].startswith("sha256:")
    assert env["OFFLOAD_ENGINE_MODEL"] == "/opt/offload/model"
    assert "config.json" in run_in(name, "ls", "/opt/offload/model").split()
