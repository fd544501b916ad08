"""deploy/k8s: the kustomization renders, every object validates against the Kubernetes schemas, and the
invariants the gateway and the engines rely on hold in the rendered output (what a cluster would receive)."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.config import parse_config
from tests.deploy.conftest import (
    K8S,
    dockerfile_env,
    load_entrypoint,
    render_kustomization,
    run,
    tool,
)

Manifest = dict[str, Any]
ROOT = K8S.parents[1]
# The oldest Kubernetes release still commonly run, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.30", "1.37")
ENGINES = {"chat-v1", "chat-v2", "embeddings-v1"}  # NAME-VERSION, one per line of deploy/models.yaml


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def named(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def engine_deployments(manifests: list[Manifest]) -> list[Manifest]:
    return [
        d
        for d in of_kind(manifests, "Deployment")
        if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "engine"
    ]


def pod_labels(workload: Manifest) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def containers(workload: Manifest) -> list[Manifest]:
    return workload["spec"]["template"]["spec"]["containers"]


def port_names(container: Manifest) -> set[str]:
    return {p["name"] for p in container.get("ports", [])}


def probe_path(container: Manifest, probe: str) -> str | None:
    return container.get(probe, {}).get("httpGet", {}).get("path")


def gateway(manifests: list[Manifest]) -> Manifest:
    return named(manifests, "Deployment", "gateway")


def validate(tmp_path: Path, manifests: list[Manifest]) -> str:
    """Run kubernetes-validate --strict on the manifests; return its output (empty when all pass)."""
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(manifests))
    versions = [arg for v in KUBERNETES_VERSIONS for arg in ("-k", v)]
    result = run([tool("kubernetes-validate"), "--strict", "--quiet", *versions, str(path)])
    problems = [line for line in result.stdout.splitlines() if line.startswith(("ERROR", "WARN", "FATAL"))]
    assert result.returncode == 0 or problems, result.stdout + result.stderr
    return "\n".join(problems)


# ---- rendering and schema validation ----


def test_every_rendered_manifest_validates_against_the_kubernetes_schemas(
    rendered: list[Manifest], tmp_path: Path
) -> None:
    assert validate(tmp_path, rendered) == ""


def test_schema_validation_rejects_a_misspelt_field(rendered: list[Manifest], tmp_path: Path) -> None:
    # The check above must be able to fail: strict mode rejects unknown fields such as a typo.
    broken = yaml.safe_load(yaml.safe_dump(gateway(rendered)))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/ready"}}

    assert "readinesProbe" in validate(tmp_path, [broken])


def test_the_default_kustomization_renders_the_gateway_engines_and_namespace(
    rendered: list[Manifest],
) -> None:
    kinds = {(m["kind"], m["metadata"]["name"]) for m in rendered}

    assert {("Namespace", "offload"), ("Deployment", "gateway"), ("Service", "gateway")} <= kinds
    assert {("HorizontalPodAutoscaler", "gateway"), ("PodDisruptionBudget", "gateway")} <= kinds
    assert {("Deployment", e) for e in ENGINES} | {("Service", e) for e in ENGINES} <= kinds
    assert all(m["metadata"].get("namespace") == "offload" for m in rendered if m["kind"] != "Namespace")


def test_the_multinode_model_is_not_in_the_default_kustomization(rendered: list[Manifest]) -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())

    assert not any("multinode" in r for r in kustomization["resources"])
    assert not [m["metadata"]["name"] for m in rendered if m["metadata"]["name"].startswith("chat-xl")]


# ---- engines ----


def test_there_is_one_engine_deployment_per_model_version(rendered: list[Manifest]) -> None:
    assert {d["metadata"]["name"] for d in engine_deployments(rendered)} == ENGINES


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_engine_deployment_requests_a_gpu(rendered: list[Manifest], name: str) -> None:
    (vllm,) = containers(named(rendered, "Deployment", name))

    assert int(vllm["resources"]["limits"]["nvidia.com/gpu"]) >= 1


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_engine_deployment_probes_health_with_a_long_startup(rendered: list[Manifest], name: str) -> None:
    (vllm,) = containers(named(rendered, "Deployment", name))
    startup = vllm["startupProbe"]

    assert probe_path(vllm, "startupProbe") == "/health"
    assert probe_path(vllm, "readinessProbe") == "/health"
    assert {startup["httpGet"]["port"], vllm["readinessProbe"]["httpGet"]["port"]} <= port_names(vllm)
    # Model download and load take minutes: the kubelet must wait at least 10 of them before restarting.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_engine_environment_is_a_valid_entrypoint_spec(rendered: list[Manifest], name: str) -> None:
    entrypoint = load_entrypoint()
    (vllm,) = containers(named(rendered, "Deployment", name))
    env = {e["name"]: e["value"] for e in vllm["env"] if "value" in e}
    image_env = dockerfile_env(ROOT / "engines" / "vllm" / "Dockerfile")

    spec = entrypoint.read_spec({**image_env, **env})  # raises, naming the variable, if one is invalid

    assert spec["SERVED_NAME"] == name
    assert spec["PORT"] == next(p["containerPort"] for p in vllm["ports"] if p["name"] == "http")
    assert spec["TASK"] == ("embeddings" if name.startswith("embeddings") else "chat")


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_engine_service_is_headless_and_selects_only_its_deployment(
    rendered: list[Manifest], name: str
) -> None:
    service = named(rendered, "Service", name)
    selected = [
        w["metadata"]["name"]
        for w in of_kind(rendered, "Deployment")
        if selects(service["spec"]["selector"], pod_labels(w))
    ]

    assert service["spec"]["clusterIP"] == "None"
    assert selected == [name]
    (vllm,) = containers(named(rendered, "Deployment", name))
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names(vllm)


# ---- gateway ----


def test_gateway_runs_as_the_images_non_root_user(rendered: list[Manifest]) -> None:
    pod = gateway(rendered)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    image_user = re.search(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert image_user is not None and int(image_user.group(1)) == pod["securityContext"]["runAsUser"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_gateway_is_ready_on_ready_and_alive_on_health(rendered: list[Manifest]) -> None:
    (container,) = containers(gateway(rendered))

    assert probe_path(container, "readinessProbe") == "/ready"
    assert probe_path(container, "livenessProbe") == "/health"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]


def test_autoscaler_targets_the_gateway_deployment_on_cpu(rendered: list[Manifest]) -> None:
    (hpa,) = of_kind(rendered, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    (container,) = containers(gateway(rendered))

    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "gateway")
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2
    # Utilization is relative to the request: without one the autoscaler cannot act.
    assert container["resources"]["requests"]["cpu"]
    # A replica count in the Deployment would fight the autoscaler on every apply.
    assert "replicas" not in gateway(rendered)["spec"]


def test_disruption_budget_selects_the_gateway_pods_and_nothing_else(rendered: list[Manifest]) -> None:
    (pdb,) = of_kind(rendered, "PodDisruptionBudget")
    selector = pdb["spec"]["selector"]["matchLabels"]
    (hpa,) = of_kind(rendered, "HorizontalPodAutoscaler")

    assert selects(selector, pod_labels(gateway(rendered)))
    assert not any(selects(selector, pod_labels(d)) for d in engine_deployments(rendered))
    # A drain must be able to proceed while the autoscaler runs its minimum.
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_gateway_service_selects_the_gateway_pods(rendered: list[Manifest]) -> None:
    service = named(rendered, "Service", "gateway")
    (container,) = containers(gateway(rendered))

    assert selects(service["spec"]["selector"], pod_labels(gateway(rendered)))
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names(container)


def configmap_config(rendered: list[Manifest]) -> tuple[str, str]:
    """The gateway's config text from the ConfigMap its Deployment mounts, and the path it is read from."""
    deployment = gateway(rendered)
    (container,) = containers(deployment)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    for mount in container["volumeMounts"]:
        source = volumes[mount["name"]].get("configMap")
        if source is None:
            continue
        data = named(rendered, "ConfigMap", source["name"])["data"]
        for key, text in data.items():
            if f"{mount['mountPath']}/{key}" == env["OFFLOAD_CONFIG"]:
                return text, env["OFFLOAD_CONFIG"]
    raise AssertionError("the gateway reads OFFLOAD_CONFIG from no mounted ConfigMap key")


def engine_urls(text: str) -> list[tuple[str, str, str]]:
    """(model, served name, engine base URL) for every engine of every version in a gateway config."""
    config = parse_config(text)
    return [
        (model.name, model.served_name(engine), engine.base_url)
        for model in config.models
        for version in model.version_configs().values()
        for engine in version.engines
    ]


def test_gateway_configmap_is_a_valid_offload_config(rendered: list[Manifest]) -> None:
    text, path = configmap_config(rendered)

    config = parse_config(text, path)

    chat = config.model("chat")
    assert chat is not None and chat.versions is not None and set(chat.versions) == {"v1", "v2"}
    assert {(urlsplit(url).hostname or "").split(".")[0] for _, _, url in engine_urls(text)} == ENGINES
    # Headless Services are discovered by DNS: every ready pod becomes a replica.
    assert all(e.dns for m in config.models for v in m.version_configs().values() for e in v.engines)


def test_gateway_config_points_at_headless_engine_services(rendered: list[Manifest]) -> None:
    services = {s["metadata"]["name"]: s for s in of_kind(rendered, "Service")}

    for model, served_name, base_url in engine_urls(configmap_config(rendered)[0]):
        url = urlsplit(base_url)
        name, namespace, *rest = (url.hostname or "").split(".")
        assert (namespace, rest) == ("offload", ["svc", "cluster", "local"]), base_url
        assert services[name]["spec"]["clusterIP"] == "None", base_url
        assert url.port in {p["port"] for p in services[name]["spec"]["ports"]}, base_url
        # The engine must answer to the name the gateway sends it.
        env = {e["name"]: e.get("value") for e in containers(named(rendered, "Deployment", name))[0]["env"]}
        assert env["OFFLOAD_ENGINE_SERVED_NAME"] == served_name, (model, base_url)


# ---- multi-node ----


@pytest.fixture(scope="module")
def multinode() -> list[Manifest]:
    return render_kustomization(K8S / "multinode")


def test_multinode_manifests_validate_against_the_kubernetes_schemas(
    multinode: list[Manifest], tmp_path: Path
) -> None:
    assert validate(tmp_path, multinode) == ""


def test_multinode_model_spans_every_gpu_of_its_pods(multinode: list[Manifest]) -> None:
    sets = of_kind(multinode, "StatefulSet")
    leader = next(s for s in sets if pod_labels(s).get("offload.dev/role") == "leader")
    (vllm,) = containers(leader)
    env = {e["name"]: e.get("value") for e in vllm["env"]}
    gpus = sum(
        s["spec"]["replicas"] * int(containers(s)[0]["resources"]["limits"]["nvidia.com/gpu"]) for s in sets
    )

    tensor, pipeline = (
        int(env["OFFLOAD_ENGINE_TENSOR_PARALLEL_SIZE"]),
        int(env["OFFLOAD_ENGINE_PIPELINE_PARALLEL_SIZE"]),
    )
    assert pipeline > 1 and env["OFFLOAD_ENGINE_DISTRIBUTED_EXECUTOR_BACKEND"] == "ray"
    assert tensor * pipeline == gpus
    assert probe_path(vllm, "startupProbe") == "/health"
    assert probe_path(vllm, "readinessProbe") == "/health"
    load_entrypoint().read_spec({k: v for k, v in env.items() if k.startswith("OFFLOAD_ENGINE_") and v})


def test_gateway_reads_its_api_keys_from_the_gateway_keys_secret(rendered: list[Manifest]) -> None:
    text, path = configmap_config(rendered)
    config = parse_config(text, path)
    deployment = gateway(rendered)
    (container,) = containers(deployment)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    keys_file = str(config.auth.keys_file)

    mount = next(m for m in container["volumeMounts"] if keys_file.startswith(m["mountPath"] + "/"))
    secret = named(rendered, "Secret", volumes[mount["name"]]["secret"]["secretName"])
    key = keys_file.removeprefix(mount["mountPath"] + "/")
    keys = yaml.safe_load(base64.b64decode(secret["data"][key]))
    assert set(keys) == {"keys"}  # the shape the gateway reads (the shipped list is empty)
    assert mount.get("readOnly") is True and not mount.get("subPath")  # updates reach the pod


def test_the_pods_grace_period_covers_the_prestop_pause_and_the_gateways_drain(
    rendered: list[Manifest],
) -> None:
    from gateway.settings import ServerSettings

    spec = gateway(rendered)["spec"]["template"]["spec"]
    (container,) = containers(gateway(rendered))
    env = {e["name"]: e.get("value") for e in container["env"]}
    defaults = ServerSettings()
    grace = float(env.get("OFFLOAD_SERVER__DRAIN_GRACE", defaults.drain_grace))
    timeout = float(env.get("OFFLOAD_SERVER__DRAIN_TIMEOUT", defaults.drain_timeout))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"

    assert spec["terminationGracePeriodSeconds"] > float(command[1]) + grace + timeout
