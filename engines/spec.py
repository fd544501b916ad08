"""EngineSpec: everything needed to start one local vLLM engine, and the command line it becomes.

The engines package is the lower layer: it owns its launch-settings type (:class:`EngineLaunch`) and
never imports the gateway. The gateway's validated configuration builds one
(``gateway.config.LocalEngine.launch``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Task = Literal["chat", "embeddings"]


@dataclass(frozen=True)
class EngineLaunch:
    """How to run one local vLLM server: the settings of ``engine.local`` in the configuration file.

    Values are taken as given (the gateway's configuration validates what users write).
    """

    model: str  # packaged model name (smollm2, minilm) or a model directory
    port: int
    host: str = "127.0.0.1"
    dtype: str = "auto"
    enforce_eager: bool = True  # start-up in ~50 s instead of ~140 s on CPU
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE, whole GiB
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    tensor_parallel_size: int | None = None
    cpus: str | None = None  # CPU set, e.g. "0-1": process affinity and VLLM_CPU_OMP_THREADS_BIND
    memory_limit_gib: float | None = None  # hard limit: the engine is killed (and restarted) past it
    on_demand: bool = False  # start on the first request, stop when idle
    idle_timeout: float = 300.0  # on-demand: idle seconds before stopping
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    startup_timeout: float = 600.0


@dataclass(frozen=True)
class EngineSpec:
    """One local engine: which model directory, under which name, with which launch settings."""

    name: str
    task: Task
    model_dir: Path
    served_name: str
    launch: EngineLaunch

    @property
    def base_url(self) -> str:
        """Where the engine answers once up."""
        return f"http://{self.launch.host}:{self.launch.port}"

    def argv(self) -> list[str]:
        """The command that starts the vLLM OpenAI server.

        ``python -m`` rather than the ``vllm`` script: the CPU build's distribution is named
        ``vllm-cpu`` and its console script fails to find itself.
        """
        e = self.launch
        args = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.served_name,
            "--host",
            e.host,
            "--port",
            str(e.port),
            "--dtype",
            e.dtype,
            "--disable-uvicorn-access-log",
        ]
        if self.task == "embeddings":
            args += ["--runner", "pooling"]
        if e.enforce_eager:
            args.append("--enforce-eager")
        optional = {
            "--max-model-len": e.max_model_len,
            "--max-num-seqs": e.max_num_seqs,
            "--gpu-memory-utilization": e.gpu_memory_utilization,
            "--tensor-parallel-size": e.tensor_parallel_size,
        }
        for flag, value in optional.items():
            if value is not None:
                args += [flag, str(value)]
        return args + list(e.extra_args)

    def env(self) -> dict[str, str]:
        """Environment additions for the engine process."""
        e = self.launch
        env = {
            "HF_HUB_OFFLINE": "1",  # weights are local; never reach for a hub
            "VLLM_CPU_KVCACHE_SPACE": str(e.kv_cache_gib),
            "VLLM_NO_USAGE_STATS": "1",
            "VLLM_DO_NOT_TRACK": "1",
        }
        if e.cpus is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = e.cpus
        env.update(e.env)
        return env
