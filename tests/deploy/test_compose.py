"""deploy/compose.yaml: it parses into compose-spec's typed models, and the gpu and cpu profiles each hold a
gateway that waits for healthy engines which its config file can reach by name. (tests/containers runs the
cpu profile for real.)"""

from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from engines.packaging import PACKAGED_TASKS, WEIGHTS_PATH
from gateway.config import parse_config
from tests.deploy.conftest import DEPLOY, ROOT, dockerfile_env, interpolate_defaults, load_entrypoint

compose_spec = pytest.importorskip("compose_spec", reason="compose-spec is not installed (the test extra)")

COMPOSE = DEPLOY / "compose.yaml"
CPU_ENGINE = DEPLOY / "compose" / "cpu-engine.Dockerfile"
PROFILES = ("gpu", "cpu")
GATEWAYS = {"gpu": "gateway", "cpu": "gateway-cpu"}
# Profiles added to one of the above (`--profile cpu --profile cpu-canary`): their engines are reachable from
# that profile's gateway, which does not wait for them.
ADDED = {"gpu": (), "cpu": ("cpu-canary",)}


def parse(text: str) -> compose_spec.ComposeSpecification:
    # apply_merge: the file shares service fragments through YAML anchors and `<<` merge keys. Variables
    # are replaced by their defaults first, as compose does with them unset.
    project = compose_spec.PyOptions(apply_merge=True).from_yaml(interpolate_defaults(text))
    project.validate()
    return project.to_spec()


@pytest.fixture(scope="module")
def spec() -> compose_spec.ComposeSpecification:
    return parse(COMPOSE.read_text())


def in_profile(spec: compose_spec.ComposeSpecification, profile: str) -> dict[str, compose_spec.Service]:
    return {name: s for name, s in spec.services.items() if profile in (s.profiles or ())}


def engines(spec: compose_spec.ComposeSpecification, profile: str) -> dict[str, compose_spec.Service]:
    return {n: s for n, s in in_profile(spec, profile).items() if n != GATEWAYS[profile]}


def environment(service: compose_spec.Service) -> dict[str, str]:
    env = service.environment or {}
    assert isinstance(env, dict), "environment is written as a mapping"
    return {k: interpolate_defaults(str(v)) for k, v in env.items() if v is not None}


def test_compose_file_parses_into_typed_models(spec: compose_spec.ComposeSpecification) -> None:
    assert set(spec.services) == {"gateway", "chat-v1", "chat-v2", "embeddings"} | {
        "gateway-cpu",
        "chat-v1-cpu",
        "chat-v2-cpu",
        "embeddings-cpu",
    } | {"prometheus", "grafana"}


def test_compose_parser_rejects_a_misspelt_key() -> None:
    # The check above must be able to fail: an unknown service key is an error, not ignored.
    broken = COMPOSE.read_text().replace("    depends_on:\n", "    depends_onn:\n", 1)

    with pytest.raises(ValueError, match="depends_onn"):
        parse(broken)


def test_every_service_belongs_to_exactly_one_profile(spec: compose_spec.ComposeSpecification) -> None:
    # A service without a profile would start with either; one in both would clash on names and ports.
    assert {n: sorted(s.profiles or ()) for n, s in spec.services.items() if len(s.profiles or ()) != 1} == {}
    assert all(in_profile(spec, p) for p in PROFILES)


@pytest.mark.parametrize("name", ["chat-v1", "chat-v2", "embeddings"])
def test_gpu_engines_reserve_an_nvidia_gpu(spec: compose_spec.ComposeSpecification, name: str) -> None:
    service = spec.services[name]
    (device,) = service.deploy.resources.reservations.devices

    assert service.profiles == {"gpu"}
    assert device.driver == "nvidia" and "gpu" in device.capabilities
    assert device.device_ids or device.count


def model_image_env(image: str) -> dict[str, str]:
    """The environment of a model image `make images` builds: offload/model-MODEL:VERSION is the CPU engine
    image plus what `offload package MODEL --version VERSION` sets (engines/packaging.py)."""
    repository, version = image.rsplit(":", 1)
    model = repository.removeprefix("offload/model-")
    assert model in PACKAGED_TASKS, f"{image}: not a packaged model"
    return {
        **dockerfile_env(CPU_ENGINE),
        "OFFLOAD_ENGINE_MODEL": WEIGHTS_PATH,
        "OFFLOAD_ENGINE_SERVED_NAME": f"{model}-{version}",
        "OFFLOAD_ENGINE_TASK": PACKAGED_TASKS[model],
    }


def test_cpu_profile_reserves_no_gpu_and_runs_model_images(spec: compose_spec.ComposeSpecification) -> None:
    cpu = {**engines(spec, "cpu"), **in_profile(spec, "cpu-canary")}
    for name, service in cpu.items():
        reservations = service.deploy.resources.reservations if service.deploy.resources else None
        assert reservations is None or not reservations.devices, name
        # one immutable image per model version, built by `make images`, not by compose
        assert service.build is None, name
        assert model_image_env(service.image), name
        assert service.image in makefile_model_images() or "cpu-canary" in service.profiles, name


def makefile_model_images() -> set[str]:
    """The model images `make images` builds by default (MODEL_VERSIONS in deploy/containers.mk)."""
    import re

    text = (DEPLOY / "containers.mk").read_text()
    match = re.search(r"^MODEL_VERSIONS \?= (.+)$", text, re.MULTILINE)
    assert match, "MODEL_VERSIONS is gone from deploy/containers.mk"
    return {f"offload/model-{v}" for v in match.group(1).split()}


def test_every_service_has_a_healthcheck_and_cpu_and_memory_limits(
    spec: compose_spec.ComposeSpecification,
) -> None:
    for name, service in spec.services.items():
        check = service.healthcheck
        assert check is not None and check.test and "/health" in " ".join(check.test), name
        limits = service.deploy.resources.limits
        assert limits.cpus and limits.memory, name


@pytest.mark.parametrize("name", ["chat-v1", "chat-v2", "embeddings"])
def test_gpu_engines_allow_a_long_start(spec: compose_spec.ComposeSpecification, name: str) -> None:
    # A first start downloads the weights: "unhealthy" after the default 0 s would be wrong.
    period = compose_spec.parse_duration(spec.services[name].healthcheck.start_period)

    assert period >= 600


@pytest.mark.parametrize("profile", PROFILES)
def test_gateway_waits_for_every_engine_of_its_profile_to_be_healthy(
    spec: compose_spec.ComposeSpecification, profile: str
) -> None:
    depends_on = spec.services[GATEWAYS[profile]].depends_on

    assert set(depends_on) == set(engines(spec, profile))
    assert {d.condition.value for d in depends_on.values()} == {"service_healthy"}


def test_dependencies_stay_inside_their_profile(spec: compose_spec.ComposeSpecification) -> None:
    for name, service in spec.services.items():
        for target in service.depends_on or {}:
            assert target in spec.services, (name, target)
            assert spec.services[target].profiles == service.profiles, (name, target)


def test_named_volumes_are_declared(spec: compose_spec.ComposeSpecification) -> None:
    for name, service in spec.services.items():
        for volume in service.volumes or ():
            source = str(volume).split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in (spec.volumes or {}), (name, source)


@pytest.mark.parametrize("profile", PROFILES)
def test_gateway_mounts_a_valid_config_whose_engines_resolve_in_its_profile(
    spec: compose_spec.ComposeSpecification, profile: str
) -> None:
    gateway = spec.services[GATEWAYS[profile]]
    image_config = dockerfile_env(ROOT / "Dockerfile")["OFFLOAD_CONFIG"]
    mounts = dict(str(v).split(":")[:2] for v in gateway.volumes or ())
    source = next(src for src, dst in mounts.items() if dst == image_config)
    config_path = (COMPOSE.parent / source).resolve()
    # Every name the engines answer to on the compose network: service names and aliases.
    reachable: dict[str, compose_spec.Service] = {}
    added = {n: s for p in ADDED[profile] for n, s in in_profile(spec, p).items()}
    for name, service in {**engines(spec, profile), **added}.items():
        reachable[name] = service
        for network in (service.networks or {}).values():
            reachable.update(dict.fromkeys(network.aliases or (), service))

    config = parse_config(config_path.read_text(), str(config_path))

    for model in config.models:
        for version in model.version_configs().values():
            for engine in version.engines:
                url = urlsplit(engine.base_url)
                service = reachable.get(url.hostname or "")
                assert service is not None, f"{profile}: no engine answers to {url.hostname}"
                env = environment(service)
                assert url.port == int(env.get("OFFLOAD_ENGINE_PORT", "8000")), engine.base_url
                assert env["OFFLOAD_ENGINE_SERVED_NAME"] == model.served_name(engine), engine.base_url


@pytest.mark.parametrize("profile", PROFILES)
def test_engine_environments_are_valid_entrypoint_specs(
    spec: compose_spec.ComposeSpecification, profile: str
) -> None:
    entrypoint = load_entrypoint()
    added = {n: s for p in ADDED[profile] for n, s in in_profile(spec, p).items()}
    for name, service in {**engines(spec, profile), **added}.items():
        if service.build is not None:
            dockerfile = Path(COMPOSE.parent / service.build.context) / (
                service.build.dockerfile or "Dockerfile"
            )
            image_env = dockerfile_env(dockerfile.resolve())
        else:
            image_env = model_image_env(service.image)

        engine_spec = entrypoint.read_spec({**image_env, **environment(service)})

        assert engine_spec["TASK"] == ("embeddings" if name.startswith("embeddings") else "chat"), name
        if profile == "cpu":  # the CPU build's `vllm` script is broken: the image must use the module
            assert engine_spec["LAUNCHER"] == "api-server", name


def test_gateway_reads_its_api_keys_from_a_compose_secret_and_refuses_to_start_without_one(
    spec: compose_spec.ComposeSpecification,
) -> None:
    import yaml

    from gateway.config import load_config
    from gateway.keys import hash_key
    from gateway.main import exposure_problem
    from gateway.settings import ServerSettings, Settings

    raw = yaml.safe_load(interpolate_defaults(COMPOSE.read_text()))
    gateway = raw["services"]["gateway"]
    (secret,) = gateway["secrets"]
    secret_file = (COMPOSE.parent / raw["secrets"][secret["source"]]["file"]).resolve()
    config_path = DEPLOY / "compose" / "offload.yaml"
    config = parse_config(config_path.read_text(), str(config_path))
    assert str(config.auth.keys_file) == secret["target"]

    # the shipped file, mounted where the configuration looks for it: valid, and empty
    mounted = Path(tempfile.mkdtemp())
    (mounted / "offload.yaml").write_text(config_path.read_text().replace(secret["target"], "keys.yaml"))
    (mounted / "keys.yaml").write_text(secret_file.read_text())
    shipped = load_config(mounted / "offload.yaml")
    in_container = Settings(server=ServerSettings(host="0.0.0.0"))
    assert shipped.auth.keys == () and exposure_problem(in_container, shipped) is not None

    (mounted / "keys.yaml").write_text(f"keys:\n  - {{name: app, hash: '{hash_key('ofl-app')}'}}\n")
    assert exposure_problem(in_container, load_config(mounted / "offload.yaml")) is None
