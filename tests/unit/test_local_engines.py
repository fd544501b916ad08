"""gateway.local_engines: a configuration becomes the engines package's specs."""

from __future__ import annotations

from pathlib import Path

from engines.spec import EngineLaunch, EngineSpec
from gateway.config import parse_config
from gateway.local_engines import engine_specs

MODELS = Path("/data/models")


def specs_of(text: str) -> list[EngineSpec]:
    return engine_specs(parse_config(text), MODELS)


def test_a_packaged_model_is_served_from_the_models_directory() -> None:
    (spec,) = specs_of(
        "models:\n  - {name: smollm2, task: chat, engine: {local: {model: smollm2, port: 8101, dtype: float32}}}\n"
    )

    assert spec.name == "smollm2"
    assert spec.task == "chat"
    assert spec.model_dir == MODELS / "smollm2"
    assert spec.served_name == "smollm2"
    assert spec.launch == EngineLaunch(model="smollm2", port=8101, dtype="float32")


def test_any_other_model_is_a_directory_with_home_expanded() -> None:
    (absolute,) = specs_of(
        "models:\n  - {name: a, task: chat, engine: {local: {model: /w/llama, port: 1}}}\n"
    )
    (home,) = specs_of("models:\n  - {name: b, task: embeddings, engine: {local: {model: ~/e5, port: 2}}}\n")

    assert absolute.model_dir == Path("/w/llama")
    assert home.model_dir == Path.home() / "e5"
    assert home.task == "embeddings"


def test_engines_given_by_url_or_dns_are_not_local() -> None:
    specs = specs_of(
        "models:\n"
        "  - {name: remote, task: chat, engine: {url: 'http://h:8000'}}\n"
        "  - {name: found, task: chat, engine: {dns: 'svc.ns:8000'}}\n"
        "  - {name: mine, task: embeddings, engine: {local: {model: minilm, port: 8102}}}\n"
    )

    assert [s.name for s in specs] == ["mine"]


def test_versions_and_replicas_are_named_model_version_and_index() -> None:
    specs = specs_of(
        """
models:
  - name: chat
    task: chat
    versions:
      v1:
        weight: 1
        engines:
          - {local: {model: smollm2, port: 8301}}
          - {local: {model: smollm2, port: 8302}, served_name: other}
      v2:
        engines: [{local: {model: /m/v2, port: 8303}}]
  - name: embed
    task: embeddings
    engines:
      - {url: 'http://h:1'}
      - {local: {model: minilm, port: 8304}}
"""
    )

    assert [s.name for s in specs] == ["chat:v1#0", "chat:v1#1", "chat:v2", "embed#1"]
    assert [s.launch.port for s in specs] == [8301, 8302, 8303, 8304]
    assert [s.served_name for s in specs] == ["chat", "other", "chat", "embed"]
    assert [s.model_dir for s in specs] == [
        MODELS / "smollm2",
        MODELS / "smollm2",
        Path("/m/v2"),
        MODELS / "minilm",
    ]
    assert [s.base_url for s in specs] == [f"http://127.0.0.1:{p}" for p in (8301, 8302, 8303, 8304)]


def test_two_replicas_of_one_unversioned_model_are_numbered() -> None:
    specs = specs_of(
        "models:\n  - name: m\n    task: chat\n    engines:\n"
        "      - {local: {model: smollm2, port: 1}}\n      - {local: {model: smollm2, port: 2}}\n"
    )

    assert [s.name for s in specs] == ["m#0", "m#1"]


def test_launch_settings_reach_the_spec() -> None:
    (spec,) = specs_of(
        "models:\n  - name: m\n    task: chat\n    engine:\n      local:\n"
        "        {model: smollm2, port: 9, on_demand: true, idle_timeout: 5, cpus: '0', env: {A: b}}\n"
    )

    assert spec.launch.on_demand is True
    assert spec.launch.idle_timeout == 5
    assert spec.env()["A"] == "b"
    assert spec.env()["VLLM_CPU_OMP_THREADS_BIND"] == "0"


def test_no_local_engines_no_specs() -> None:
    assert specs_of("models:\n  - {name: r, task: chat, engine: {url: 'http://h:1'}}\n") == []
