"""engines/vllm/entrypoint.py, run as the container runs it: OFFLOAD_ENGINE_* variables in, a vLLM command
out (``--print``) or exec'd; an invalid variable stops it with exit status 2 and its name."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from tests.deploy.conftest import ENTRYPOINT, run

PREFIX = "OFFLOAD_ENGINE_"
FULL_SPEC = {
    "MODEL": "Qwen/Qwen2.5-1.5B-Instruct",
    "SERVED_NAME": "chat-v1",
    "PORT": "8001",
    "DTYPE": "bfloat16",
    "MAX_MODEL_LEN": "8192",
    "MAX_NUM_SEQS": "64",
    "GPU_MEMORY_UTILIZATION": "0.85",
    "TENSOR_PARALLEL_SIZE": "2",
    "PIPELINE_PARALLEL_SIZE": "2",
    "DISTRIBUTED_EXECUTOR_BACKEND": "ray",
    "ENFORCE_EAGER": "true",
    "EXTRA_ARGS": "--enable-prefix-caching --root-path '/offload chat'",
}


def environment(spec: dict[str, str], path: str | None = None) -> dict[str, str]:
    """This process's environment without any OFFLOAD_ENGINE_* variable, plus ``spec``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    env.update({PREFIX + k: v for k, v in spec.items()})
    if path is not None:
        env["PATH"] = path
    return env


def entrypoint(spec: dict[str, str], *args: str, path: str | None = None):  # type: ignore[no-untyped-def]
    return run([sys.executable, str(ENTRYPOINT), *args], env=environment(spec, path), timeout=30)


def printed(spec: dict[str, str], *args: str) -> list[str]:
    result = entrypoint(spec, "--print", *args)
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# ---- rendering ----


def test_a_model_alone_renders_vllm_serve_with_defaults() -> None:
    argv = printed({"MODEL": "Qwen/Qwen2.5-1.5B-Instruct"})

    assert argv[:3] == ["vllm", "serve", "Qwen/Qwen2.5-1.5B-Instruct"]
    assert flag(argv, "--served-model-name") == "Qwen/Qwen2.5-1.5B-Instruct"
    assert (flag(argv, "--host"), flag(argv, "--port"), flag(argv, "--dtype")) == ("0.0.0.0", "8000", "auto")
    assert "--disable-uvicorn-access-log" in argv
    for absent in ("--runner", "--enforce-eager", "--max-model-len", "--tensor-parallel-size"):
        assert absent not in argv


def test_every_variable_becomes_its_flag() -> None:
    argv = printed(FULL_SPEC)

    assert argv[2] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert flag(argv, "--served-model-name") == "chat-v1"
    assert flag(argv, "--port") == "8001"
    assert flag(argv, "--dtype") == "bfloat16"
    assert flag(argv, "--max-model-len") == "8192"
    assert flag(argv, "--max-num-seqs") == "64"
    assert flag(argv, "--gpu-memory-utilization") == "0.85"
    assert flag(argv, "--tensor-parallel-size") == "2"
    assert flag(argv, "--pipeline-parallel-size") == "2"
    assert flag(argv, "--distributed-executor-backend") == "ray"
    assert "--enforce-eager" in argv


def test_extra_args_are_split_like_a_shell_and_command_line_arguments_come_last() -> None:
    argv = printed(FULL_SPEC, "--seed", "7")

    assert argv[-5:] == ["--enable-prefix-caching", "--root-path", "/offload chat", "--seed", "7"]


def test_embeddings_use_the_pooling_runner() -> None:
    argv = printed({"MODEL": "sentence-transformers/all-MiniLM-L6-v2", "TASK": "embeddings"})

    assert flag(argv, "--runner") == "pooling"


@pytest.mark.parametrize("value", ["false", "0", "no", "off", ""])
def test_enforce_eager_false_or_empty_adds_no_flag(value: str) -> None:
    assert "--enforce-eager" not in printed({"MODEL": "m", "ENFORCE_EAGER": value})


def test_an_empty_variable_counts_as_unset() -> None:
    # compose's ${VAR:-} expands to an empty string; the default must then apply.
    argv = printed({"MODEL": "m", "PORT": "", "SERVED_NAME": ""})

    assert (flag(argv, "--port"), flag(argv, "--served-model-name")) == ("8000", "m")


def test_api_server_launcher_runs_the_server_module_with_model_flag() -> None:
    argv = printed({"MODEL": "/models/smollm2", "LAUNCHER": "api-server"})

    assert argv[1:5] == ["-m", "vllm.entrypoints.openai.api_server", "--model", "/models/smollm2"]
    assert Path(argv[0]).name.startswith("python")


def test_without_print_it_execs_vllm_with_the_rendered_arguments(tmp_path: Path) -> None:
    # A stand-in `vllm` on PATH records what it was started with: exec replaced the entrypoint by it.
    fake = tmp_path / "vllm"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\nprint(json.dumps([os.getpid(), sys.argv[1:]]))\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)

    result = entrypoint({"MODEL": "m", "SERVED_NAME": "chat-v1"}, "--seed", "7", path=str(tmp_path))

    assert result.returncode == 0, result.stderr
    _pid, args = json.loads(result.stdout)
    assert args[:2] == ["serve", "m"] and args[-2:] == ["--seed", "7"]
    assert "offload-engine: exec vllm serve m" in result.stderr


def test_a_missing_vllm_executable_exits_127_naming_it(tmp_path: Path) -> None:
    result = entrypoint({"MODEL": "m"}, path=str(tmp_path))

    assert result.returncode == 127
    assert "cannot run vllm" in result.stderr


# ---- invalid specs ----


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({}, "OFFLOAD_ENGINE_MODEL is required"),
        ({"MODEL": "two words"}, "OFFLOAD_ENGINE_MODEL='two words'"),
        ({"MODEL": "m", "PORT": "80OO"}, "OFFLOAD_ENGINE_PORT='80OO'"),
        ({"MODEL": "m", "PORT": "70000"}, "OFFLOAD_ENGINE_PORT='70000'"),
        ({"MODEL": "m", "TASK": "generate"}, "OFFLOAD_ENGINE_TASK='generate'"),
        ({"MODEL": "m", "DTYPE": "fp8"}, "OFFLOAD_ENGINE_DTYPE='fp8'"),
        ({"MODEL": "m", "MAX_MODEL_LEN": "0"}, "OFFLOAD_ENGINE_MAX_MODEL_LEN='0'"),
        ({"MODEL": "m", "MAX_NUM_SEQS": "many"}, "OFFLOAD_ENGINE_MAX_NUM_SEQS='many'"),
        ({"MODEL": "m", "GPU_MEMORY_UTILIZATION": "1.5"}, "OFFLOAD_ENGINE_GPU_MEMORY_UTILIZATION='1.5'"),
        ({"MODEL": "m", "GPU_MEMORY_UTILIZATION": "0"}, "OFFLOAD_ENGINE_GPU_MEMORY_UTILIZATION='0'"),
        ({"MODEL": "m", "TENSOR_PARALLEL_SIZE": "-2"}, "OFFLOAD_ENGINE_TENSOR_PARALLEL_SIZE='-2'"),
        (
            {"MODEL": "m", "DISTRIBUTED_EXECUTOR_BACKEND": "mpi"},
            "OFFLOAD_ENGINE_DISTRIBUTED_EXECUTOR_BACKEND",
        ),
        ({"MODEL": "m", "ENFORCE_EAGER": "maybe"}, "OFFLOAD_ENGINE_ENFORCE_EAGER='maybe'"),
        ({"MODEL": "m", "LAUNCHER": "docker"}, "OFFLOAD_ENGINE_LAUNCHER='docker'"),
        ({"MODEL": "m", "EXTRA_ARGS": "--chat-template 'unclosed"}, "OFFLOAD_ENGINE_EXTRA_ARGS="),
        ({"MODEL": "m", "EXTRA_ARGS": "--port 9000"}, "EXTRA_ARGS sets --port; use OFFLOAD_ENGINE_PORT"),
        ({"MODEL": "m", "EXTRA_ARGS": "--max_model_len=9"}, "use OFFLOAD_ENGINE_MAX_MODEL_LEN"),
        ({"MODEL": "m", "MAX_MODEL_LENGTH": "4096"}, "did you mean OFFLOAD_ENGINE_MAX_MODEL_LEN?"),
    ],
)
def test_an_invalid_variable_exits_2_naming_it(spec: dict[str, str], named: str) -> None:
    result = entrypoint(spec, "--print")

    assert result.returncode == 2
    assert named in result.stderr
    assert result.stdout == ""


def test_every_problem_is_reported_at_once() -> None:
    result = entrypoint({"MODEL": "m", "PORT": "x", "TASK": "y", "MAX_NUM_SEQS": "z"}, "--print")

    assert result.returncode == 2
    assert sorted(line.split("=")[0].strip() for line in result.stderr.splitlines()[1:]) == [
        "OFFLOAD_ENGINE_MAX_NUM_SEQS",
        "OFFLOAD_ENGINE_PORT",
        "OFFLOAD_ENGINE_TASK",
    ]


def test_an_invalid_spec_never_starts_vllm(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    fake = tmp_path / "vllm"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)

    result = entrypoint({"MODEL": "m", "PORT": "x"}, path=str(tmp_path))

    assert result.returncode == 2 and not marker.exists()


# ---- against vLLM's own argument parser ----

PARSE_WITH_VLLM = textwrap.dedent(
    """
    import json, sys
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    def serve_parser():
        # What `vllm serve` builds (vllm/entrypoints/cli/main.py).
        parser = FlexibleArgumentParser(prog="vllm")
        subparsers = parser.add_subparsers(dest="subparser")
        ServeSubcommand().subparser_init(subparsers)
        return parser

    results = []
    for argv in json.load(sys.stdin):
        try:
            if argv[:2] == ["vllm", "serve"]:
                args = serve_parser().parse_args(argv[1:])
                args.model = args.model_tag
            else:  # python -m vllm.entrypoints.openai.api_server
                args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv[3:])
            validate_parsed_serve_args(args)
        except (SystemExit, Exception) as exc:  # argparse exits on an unknown flag
            results.append({"error": repr(exc)})
            continue
        results.append({k: getattr(args, k) for k in (
            "model", "served_model_name", "host", "port", "dtype", "runner", "enforce_eager",
            "max_model_len", "max_num_seqs", "gpu_memory_utilization", "tensor_parallel_size",
            "pipeline_parallel_size", "distributed_executor_backend", "enable_prefix_caching",
            "root_path", "seed")})
    print(json.dumps(results, default=str))
    """
)


def parse_with_vllm(commands: list[list[str]]):  # type: ignore[no-untyped-def]
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed (the `engines` extra): cannot check flags against its parser")
    return run([sys.executable, "-c", PARSE_WITH_VLLM], input=json.dumps(commands), timeout=120)


def test_rendered_commands_are_accepted_by_the_vllm_argument_parser() -> None:
    chat = printed(FULL_SPEC, "--seed", "7")
    embeddings = printed({"MODEL": "/models/minilm", "TASK": "embeddings", "LAUNCHER": "api-server"})
    misspelt = printed(
        {"MODEL": "m", "EXTRA_ARGS": "--enable-prefix-cashing"}
    )  # the check must be able to fail

    result = parse_with_vllm([chat, embeddings, misspelt])

    assert result.returncode == 0, result.stderr[-3000:]
    parsed_chat, parsed_embeddings, parsed_misspelt = json.loads(result.stdout.splitlines()[-1])
    assert "error" not in parsed_chat and "error" not in parsed_embeddings, result.stderr[-3000:]
    assert "error" in parsed_misspelt
    assert parsed_chat["model"] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert parsed_chat["served_model_name"] == ["chat-v1"]
    assert (parsed_chat["host"], parsed_chat["port"], parsed_chat["dtype"]) == ("0.0.0.0", 8001, "bfloat16")
    assert (parsed_chat["max_model_len"], parsed_chat["max_num_seqs"]) == (8192, 64)
    assert parsed_chat["gpu_memory_utilization"] == 0.85
    assert (parsed_chat["tensor_parallel_size"], parsed_chat["pipeline_parallel_size"]) == (2, 2)
    assert parsed_chat["distributed_executor_backend"] == "ray"
    assert parsed_chat["enforce_eager"] is True and parsed_chat["enable_prefix_caching"] is True
    assert (parsed_chat["root_path"], parsed_chat["seed"]) == ("/offload chat", 7)
    assert (parsed_embeddings["model"], parsed_embeddings["runner"]) == ("/models/minilm", "pooling")
