"""The model configuration file: which models are served and by which engines.

YAML, validated with pydantic; an invalid file fails at start with a message naming the bad field.
Without a file, :func:`default_config` serves the two packaged models from local vLLM processes.
See ``deploy/examples/offload.yaml`` for a documented example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Task = Literal["chat", "embeddings"]


class _Strict(BaseModel):
    # A misspelt key is a mistake worth failing on, not something to ignore.
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalEngine(_Strict):
    """A vLLM server that Offload starts as a separate local process."""

    model: str = Field(description="packaged model name (smollm2, minilm) or a model directory")
    port: int = Field(ge=1, le=65535)
    host: str = "127.0.0.1"
    dtype: str = "auto"
    enforce_eager: bool = True  # start-up in ~50 s instead of ~140 s on CPU
    kv_cache_gib: float = Field(default=1.0, gt=0, description="VLLM_CPU_KVCACHE_SPACE")
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    max_model_len: int | None = Field(default=None, ge=16)
    max_num_seqs: int | None = Field(default=None, ge=1)
    tensor_parallel_size: int | None = Field(default=None, ge=1)
    cpus: str | None = Field(default=None, description="VLLM_CPU_OMP_THREADS_BIND, e.g. '0-1'")
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    startup_timeout: float = Field(default=600.0, gt=0)


class EngineConfig(_Strict):
    """Either a local process to start (``local``) or an engine already running (``url``)."""

    local: LocalEngine | None = None
    url: str | None = Field(default=None, pattern=r"^https?://[^/\s]+(/.*)?$")
    served_name: str | None = Field(
        default=None, description="the engine's model name, if not the public name"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> EngineConfig:
        if (self.local is None) == (self.url is None):
            raise ValueError("give exactly one of 'local' (a process to start) or 'url'")
        return self

    @property
    def base_url(self) -> str:
        """Where the engine's OpenAI server answers (no trailing slash, no ``/v1``)."""
        if self.local is not None:
            return f"http://{self.local.host}:{self.local.port}"
        assert self.url is not None
        return self.url.rstrip("/").removesuffix("/v1")


class ModelConfig(_Strict):
    """One public model name and the engine that serves it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
    task: Task
    engine: EngineConfig

    @property
    def served_name(self) -> str:
        """The name the engine knows this model by."""
        return self.engine.served_name or self.name


class OffloadConfig(_Strict):
    """The whole file."""

    models: tuple[ModelConfig, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> OffloadConfig:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {', '.join(dupes)}")
        ports = [(m.engine.local.host, m.engine.local.port) for m in self.models if m.engine.local]
        clash = sorted({p for h, p in ports if ports.count((h, p)) > 1})
        if clash:
            raise ValueError(f"local engines share a port: {clash}")
        return self

    def model(self, name: str) -> ModelConfig | None:
        """The model with public name ``name``, if configured."""
        return next((m for m in self.models if m.name == name), None)


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid; the message says where."""


def default_config() -> OffloadConfig:
    """The two packaged models, each served by a local vLLM CPU process."""
    return OffloadConfig(
        models=(
            ModelConfig(
                name="smollm2",
                task="chat",
                # float32: in bfloat16 SmolLM2 answers garbage on these CPUs (ENGINE-NOTES).
                engine=EngineConfig(
                    local=LocalEngine(model="smollm2", port=8101, dtype="float32", max_model_len=4096)
                ),
            ),
            ModelConfig(
                name="minilm",
                task="embeddings",
                engine=EngineConfig(local=LocalEngine(model="minilm", port=8102)),
            ),
        )
    )


def _describe(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def parse_config(text: str, source: str = "<string>") -> OffloadConfig:
    """Parse and validate YAML text; raise :class:`ConfigError` naming the bad field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {source}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"invalid configuration in {source}: expected a mapping with 'models'")
    try:
        return OffloadConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def load_config(path: Path | None) -> OffloadConfig:
    """The configuration from ``path``, or the built-in default when ``path`` is None."""
    if path is None:
        return default_config()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    return parse_config(text, str(path))
