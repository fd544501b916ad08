from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engines.spec import EngineLaunch
from gateway.config import (
    ConfigError,
    EngineConfig,
    LocalEngine,
    OffloadConfig,
    default_config,
    load_config,
    parse_config,
)

VALID = """
models:
  - name: chat
    task: chat
    engine:
      url: http://engine-a:8000/v1
      served_name: HuggingFaceTB/SmolLM2
  - name: embed
    task: embeddings
    engine:
      local:
        model: minilm
        port: 8202
        cpus: "0-1"
        extra_args: ["--seed", "1"]
"""


def test_valid_file_parses_into_models_in_order() -> None:
    config = parse_config(VALID)

    assert [m.name for m in config.models] == ["chat", "embed"]
    chat, embed = config.models
    assert chat.engine is not None and embed.engine is not None
    assert chat.engine.served_name == "HuggingFaceTB/SmolLM2"
    assert chat.engine.base_url == "http://engine-a:8000"
    assert embed.engine.local is not None
    assert embed.engine.local.extra_args == ("--seed", "1")
    assert embed.engine.base_url == "http://127.0.0.1:8202"
    assert config.model("embed") is embed
    assert config.model("missing") is None


def error_of(text: str, source: str = "<string>") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source)
    return str(info.value)


def test_engine_with_both_local_and_url_names_the_field() -> None:
    message = error_of(
        "models:\n  - name: m\n    task: chat\n    engine:\n"
        "      url: http://h:1\n      local: {model: m, port: 9}\n"
    )

    assert "models.0.engine: " in message
    assert "give exactly one of 'local'" in message


def test_engine_with_neither_local_nor_url_names_the_field() -> None:
    message = error_of(
        "models:\n  - name: a\n    task: chat\n    engine: {url: 'http://h:1'}\n"
        "  - name: b\n    task: chat\n    engine: {}\n"
    )

    assert "models.1.engine: " in message
    assert "exactly one of" in message


def test_misspelt_key_is_rejected_by_name() -> None:
    message = error_of("models:\n  - name: m\n    taks: chat\n    engine: {url: 'http://h:1'}\n")

    assert "models.0.taks" in message
    assert "models.0.task" in message  # and the real key is reported missing


def test_misspelt_nested_key_is_rejected_by_name() -> None:
    message = error_of(
        "models:\n  - name: m\n    task: chat\n    engine:\n      local: {model: m, port: 9, gpus: 2}\n"
    )

    assert "models.0.engine.local.gpus" in message


def test_duplicate_model_names_are_rejected_naming_them() -> None:
    message = error_of(
        "models:\n"
        "  - {name: dup, task: chat, engine: {url: 'http://h:1'}}\n"
        "  - {name: ok, task: chat, engine: {url: 'http://h:2'}}\n"
        "  - {name: dup, task: embeddings, engine: {url: 'http://h:3'}}\n"
    )

    assert "unique" in message
    assert "repeated: dup" in message
    assert "ok" not in message.split("repeated:")[1]


def test_local_engines_on_the_same_port_are_rejected() -> None:
    message = error_of(
        "models:\n"
        "  - {name: a, task: chat, engine: {local: {model: a, port: 8300}}}\n"
        "  - {name: b, task: embeddings, engine: {local: {model: b, port: 8300}}}\n"
    )

    assert "share a port" in message
    assert "8300" in message


def test_local_engines_on_the_same_port_of_different_hosts_are_fine() -> None:
    config = parse_config(
        "models:\n"
        "  - {name: a, task: chat, engine: {local: {model: a, port: 8300, host: 127.0.0.1}}}\n"
        "  - {name: b, task: embeddings, engine: {local: {model: b, port: 8300, host: 127.0.0.2}}}\n"
    )

    assert len(config.models) == 2


def test_invalid_yaml_is_reported_with_the_source() -> None:
    message = error_of("models: [\n  - name: x", source="/etc/offload.yaml")

    assert message.startswith("invalid YAML in /etc/offload.yaml")


@pytest.mark.parametrize("text", ["", "- just\n- a list\n", "hello"])
def test_a_file_that_is_not_a_mapping_is_rejected(text: str) -> None:
    assert "expected a mapping with 'models'" in error_of(text)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("models: []", "models"),
        ("models:\n  - {name: m, task: completion, engine: {url: 'http://h:1'}}", "models.0.task"),
        ("models:\n  - {name: '-m', task: chat, engine: {url: 'http://h:1'}}", "models.0.name"),
        ("models:\n  - {name: m, task: chat, engine: {url: 'ftp://h:1'}}", "models.0.engine.url"),
        (
            "models:\n  - {name: m, task: chat, engine: {local: {model: m, port: 70000}}}",
            "models.0.engine.local.port",
        ),
        (
            "models:\n  - {name: m, task: chat, engine: {local: {model: m, port: 1, kv_cache_gib: 0}}}",
            "models.0.engine.local.kv_cache_gib",
        ),
        (
            "models:\n  - {name: m, task: chat, engine: {local: {model: m, port: 1, max_model_len: 8}}}",
            "models.0.engine.local.max_model_len",
        ),
        ("servers: []", "models"),
    ],
)
def test_invalid_values_are_reported_with_their_path(text: str, where: str) -> None:
    message = error_of(text, source="cfg.yaml")

    assert message.startswith("invalid configuration in cfg.yaml:")
    assert f"  {where}: " in message


VERSIONED = """
models:
  - name: chat
    task: chat
    versions:
      v1: {weight: 90, engines: [{url: "http://a:1"}, {url: "http://b:1"}]}
      v2: {weight: 10, fallback: v1, engines: [{url: "http://c:1"}]}
    aliases: {stable: v1, latest: v2}
"""


def test_versioned_model_parses_versions_aliases_and_replicas() -> None:
    (model,) = parse_config(VERSIONED).models

    versions = model.version_configs()
    assert list(versions) == ["v1", "v2"]
    assert len(versions["v1"].engines) == 2
    assert versions["v2"].fallback == "v1"
    assert model.aliases == {"stable": "v1", "latest": "v2"}


def test_unversioned_model_has_one_unnamed_version() -> None:
    (model,) = parse_config(
        "models:\n  - {name: m, task: chat, engines: [{url: 'http://a:1'}, {url: 'http://b:1'}]}\n"
    ).models

    versions = model.version_configs()
    assert list(versions) == [""]
    assert len(versions[""].engines) == 2


def versioned(versions: str, extra: str = "") -> str:
    return f"models:\n  - name: chat\n    task: chat\n    versions: {versions}\n{extra}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "models:\n  - {name: m, task: chat, engine: {url: 'http://a:1'}, engines: [{url: 'http://b:1'}]}",
            "give exactly one of 'engine', 'engines' or 'versions'",
        ),
        ("models:\n  - {name: m, task: chat}", "give exactly one of 'engine', 'engines' or 'versions'"),
        (
            versioned("{v1: {weight: 0, engines: [{url: 'http://a:1'}]}}"),
            "at least one version needs a weight above 0",
        ),
        (
            versioned("{v1: {weight: 1, fallback: v9, engines: [{url: 'http://a:1'}]}}"),
            "versions.v1.fallback: no version 'v9'",
        ),
        (
            versioned("{v1: {weight: 1, fallback: v1, engines: [{url: 'http://a:1'}]}}"),
            "cannot fall back to itself",
        ),
        (versioned("{'v 1': {weight: 1, engines: [{url: 'http://a:1'}]}}"), "version name 'v 1'"),
        (
            versioned("{v1: {weight: 1, engines: [{url: 'http://a:1'}]}}", "    aliases: {stable: v2}\n"),
            "aliases.stable: no version 'v2'",
        ),
        (
            versioned("{v1: {weight: 1, engines: [{url: 'http://a:1'}]}}", "    aliases: {v1: v1}\n"),
            "the name is already a version",
        ),
        (
            "models:\n  - {name: m, task: chat, engine: {url: 'http://a:1'}, aliases: {s: v1}}",
            "aliases need 'versions'",
        ),
        (versioned("{v1: {weight: 1, engines: []}}"), "models.0.versions.v1.engines"),
        (
            versioned("{v1: {weight: 1, shadow: 101, engines: [{url: 'http://a:1'}]}}"),
            "models.0.versions.v1.shadow",
        ),
    ],
)
def test_invalid_version_setups_are_explained(text: str, expected: str) -> None:
    message = error_of(text)

    assert expected in message
    assert "models.0" in message


def test_local_engines_of_different_versions_on_one_port_are_rejected() -> None:
    message = error_of(
        versioned(
            "{v1: {weight: 1, engines: [{local: {model: a, port: 8400}}]}, "
            "v2: {weight: 1, engines: [{local: {model: b, port: 8400}}]}}"
        )
    )

    assert "share a port" in message


@pytest.mark.parametrize("cpus", ["0", "0-1", "0,2", "0-1,4-5"])
def test_cpu_sets_are_accepted(cpus: str) -> None:
    config = parse_config(
        f"models:\n  - {{name: m, task: chat, engine: {{local: {{model: m, port: 9, cpus: '{cpus}'}}}}}}\n"
    )

    assert config.models[0].engine is not None and config.models[0].engine.local is not None
    assert config.models[0].engine.local.cpus == cpus


@pytest.mark.parametrize("cpus", ["all", "0-", "0;1", ""])
def test_malformed_cpu_sets_are_rejected(cpus: str) -> None:
    message = error_of(
        f"models:\n  - {{name: m, task: chat, engine: {{local: {{model: m, port: 9, cpus: '{cpus}'}}}}}}\n"
    )

    assert "models.0.engine.local.cpus" in message


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("http://h:8000", "http://h:8000"),
        ("http://h:8000/", "http://h:8000"),
        ("http://h:8000/v1", "http://h:8000"),
        ("http://h:8000/v1/", "http://h:8000"),
        ("https://proxy.example/models/chat/v1", "https://proxy.example/models/chat"),
    ],
)
def test_url_engines_have_a_base_url_without_v1(url: str, base: str) -> None:
    assert EngineConfig(url=url).base_url == base


def test_config_objects_are_frozen() -> None:
    config = parse_config(VALID)

    with pytest.raises(ValueError):
        config.models[0].name = "other"  # type: ignore[misc]


def test_default_config_serves_the_two_packaged_models_locally() -> None:
    config = default_config()

    assert isinstance(config, OffloadConfig)
    assert [(m.name, m.task) for m in config.models] == [("smollm2", "chat"), ("minilm", "embeddings")]
    assert all(m.engine.local is not None for m in config.models)
    assert OffloadConfig.model_validate(config.model_dump()) == config


def test_load_config_without_a_path_is_the_default() -> None:
    assert load_config(None) == default_config()


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "offload.yaml"
    path.write_text(VALID)

    assert [m.name for m in load_config(path).models] == ["chat", "embed"]


def test_load_config_of_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert str(path) in str(info.value)
    assert "cannot read" in str(info.value)


def test_load_config_names_the_file_in_validation_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("models:\n  - {name: m, task: chat, engine: {}}\n")

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert f"invalid configuration in {path}:" in str(info.value)


def test_fractional_kv_cache_is_refused_because_vllm_reads_whole_gib() -> None:
    with pytest.raises(ValueError):
        LocalEngine(model="m", port=9, kv_cache_gib=2.5)  # type: ignore[arg-type]  # the point: a float


def test_engine_launch_has_the_fields_and_defaults_of_local_engine() -> None:
    # The engines package keeps its own copy of the settings; the two must not drift apart.
    launch_fields = {f.name: f for f in dataclasses.fields(EngineLaunch)}

    assert list(launch_fields) == list(LocalEngine.model_fields)
    for name, info in LocalEngine.model_fields.items():
        f = launch_fields[name]
        if info.is_required():
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, name
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            assert default == info.get_default(call_default_factory=True), name


def test_launch_carries_every_setting_to_the_engines_type() -> None:
    local = LocalEngine(
        model="/models/x",
        port=8123,
        host="127.0.0.2",
        dtype="float32",
        enforce_eager=False,
        kv_cache_gib=3,
        gpu_memory_utilization=0.5,
        max_model_len=2048,
        max_num_seqs=4,
        tensor_parallel_size=2,
        cpus="0-1",
        memory_limit_gib=1.5,
        on_demand=True,
        idle_timeout=30,
        extra_args=("--seed", "1"),
        env={"A": "b"},
        startup_timeout=60,
    )

    launch = local.launch()

    assert isinstance(launch, EngineLaunch)
    assert dataclasses.asdict(launch) == local.model_dump()


def test_launch_of_a_bare_engine_keeps_the_defaults() -> None:
    assert LocalEngine(model="minilm", port=8102).launch() == EngineLaunch(model="minilm", port=8102)
