from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from engines.spec import EngineLaunch, EngineSpec, Task


def spec(task: Task = "chat", **launch: Any) -> EngineSpec:
    settings = EngineLaunch(model="m", port=8555, **launch)
    return EngineSpec(
        name="m", task=task, model_dir=Path("/models/m"), served_name="public-m", launch=settings
    )


def flag_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_argv_starts_the_vllm_openai_server_with_this_python() -> None:
    argv = spec().argv()

    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert flag_value(argv, "--model") == "/models/m"
    assert flag_value(argv, "--served-model-name") == "public-m"
    assert flag_value(argv, "--host") == "127.0.0.1"
    assert flag_value(argv, "--port") == "8555"
    assert flag_value(argv, "--dtype") == "auto"


def test_pooling_runner_only_for_embeddings() -> None:
    embeddings = spec(task="embeddings").argv()
    chat = spec(task="chat").argv()

    assert flag_value(embeddings, "--runner") == "pooling"
    assert "--runner" not in chat


def test_enforce_eager_follows_the_setting() -> None:
    assert "--enforce-eager" in spec().argv()  # the default: faster start on CPU
    assert "--enforce-eager" not in spec(enforce_eager=False).argv()


def test_optional_flags_appear_only_when_set() -> None:
    bare = spec().argv()
    for flag in ("--max-model-len", "--max-num-seqs", "--gpu-memory-utilization", "--tensor-parallel-size"):
        assert flag not in bare

    full = spec(max_model_len=4096, max_num_seqs=8, gpu_memory_utilization=0.5, tensor_parallel_size=2).argv()

    assert flag_value(full, "--max-model-len") == "4096"
    assert flag_value(full, "--max-num-seqs") == "8"
    assert flag_value(full, "--gpu-memory-utilization") == "0.5"
    assert flag_value(full, "--tensor-parallel-size") == "2"


def test_extra_args_come_last_in_order() -> None:
    argv = spec(max_num_seqs=4, extra_args=["--seed", "7", "--disable-log-stats"]).argv()

    assert argv[-3:] == ["--seed", "7", "--disable-log-stats"]
    assert argv.count("--seed") == 1


def test_base_url_is_the_local_host_and_port() -> None:
    assert spec(host="127.0.0.2").base_url == "http://127.0.0.2:8555"


def test_env_keeps_engines_offline_and_sizes_the_kv_cache() -> None:
    env = spec(kv_cache_gib=4).env()

    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "4"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in env


def test_env_binds_threads_only_when_cpus_are_set() -> None:
    assert spec(cpus="0-1").env()["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"


def test_env_adds_the_configured_variables() -> None:
    env = spec(env={"VLLM_LOGGING_LEVEL": "DEBUG", "HF_HUB_OFFLINE": "0"}).env()

    assert env["VLLM_LOGGING_LEVEL"] == "DEBUG"
    assert env["HF_HUB_OFFLINE"] == "0"  # the configuration has the last word
