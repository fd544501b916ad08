"""The model configuration file: which models are served and by which engines.

YAML, validated with pydantic; an invalid file fails at start with a message naming the bad field.
Without a file, :func:`default_config` serves the two packaged models from local vLLM processes.
See ``deploy/examples/offload.yaml`` for a documented example.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from engines.spec import EngineLaunch
from engines.spec import Task as Task  # re-exported: routing and services name tasks too


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
    # VLLM_CPU_KVCACHE_SPACE is read as a whole number of GiB (vLLM refuses "0.25").
    kv_cache_gib: int = Field(default=1, ge=1, description="VLLM_CPU_KVCACHE_SPACE")
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    max_model_len: int | None = Field(default=None, ge=16)
    max_num_seqs: int | None = Field(default=None, ge=1)
    tensor_parallel_size: int | None = Field(default=None, ge=1)
    cpus: str | None = Field(
        default=None,
        pattern=r"^\d+(-\d+)?(,\d+(-\d+)?)*$",
        description="CPU set, e.g. '0-1': process affinity and VLLM_CPU_OMP_THREADS_BIND",
    )
    memory_limit_gib: float | None = Field(
        default=None, gt=0, description="hard memory limit: the engine is killed (and restarted) past it"
    )
    on_demand: bool = Field(default=False, description="start on the first request, stop when idle")
    idle_timeout: float = Field(default=300.0, gt=0, description="on-demand: idle seconds before stopping")
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    startup_timeout: float = Field(default=600.0, gt=0)

    def launch(self) -> EngineLaunch:
        """The engines package's launch settings for this engine (it never sees this model)."""
        return EngineLaunch(
            model=self.model,
            port=self.port,
            host=self.host,
            dtype=self.dtype,
            enforce_eager=self.enforce_eager,
            kv_cache_gib=self.kv_cache_gib,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs,
            tensor_parallel_size=self.tensor_parallel_size,
            cpus=self.cpus,
            memory_limit_gib=self.memory_limit_gib,
            on_demand=self.on_demand,
            idle_timeout=self.idle_timeout,
            extra_args=self.extra_args,
            env=dict(self.env),
            startup_timeout=self.startup_timeout,
        )


class EngineConfig(_Strict):
    """A local process to start (``local``), an engine already running (``url``), or every
    engine behind a DNS name (``dns``, e.g. a Kubernetes headless service): one replica per address."""

    local: LocalEngine | None = None
    url: str | None = Field(default=None, pattern=r"^https?://[^/\s]+(/.*)?$")
    dns: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.-]+:\d{1,5}$", description="host:port")
    served_name: str | None = Field(
        default=None, description="the engine's model name, if not the public name"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> EngineConfig:
        if sum(x is not None for x in (self.local, self.url, self.dns)) != 1:
            raise ValueError("give exactly one of 'local' (a process to start), 'url' or 'dns'")
        return self

    @property
    def dns_target(self) -> tuple[str, int] | None:
        """``(host, port)`` for a DNS-discovered engine, else None."""
        if self.dns is None:
            return None
        host, _, port = self.dns.rpartition(":")
        return host, int(port)

    @property
    def base_url(self) -> str:
        """Where the engine's OpenAI server answers (no trailing slash, no ``/v1``)."""
        if self.local is not None:
            return f"http://{self.local.host}:{self.local.port}"
        if self.dns is not None:
            return f"http://{self.dns}"
        assert self.url is not None
        return self.url.rstrip("/").removesuffix("/v1")


VLLM_CPU_MAX_NUM_SEQS = 128
"""vLLM's default batch size (``--max-num-seqs``) for its OpenAI server on CPU; GPUs default higher
(256 to 1024): set ``max_num_seqs`` on GPU engines, which both the engine and the gateway then use."""

PolicyName = Literal["least_outstanding", "round_robin", "prefix_affinity"]
_VERSION = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class VersionConfig(_Strict):
    """One version of a model: its replicas and its share of the traffic."""

    engines: tuple[EngineConfig, ...] = Field(min_length=1, description="the replicas")
    weight: float = Field(default=0, ge=0, description="share of requests that do not pin a version")
    shadow: float = Field(default=0, ge=0, le=100, description="percent of requests copied here")
    fallback: str | None = Field(default=None, description="version to use when none of ours is healthy")
    policy: PolicyName | None = Field(default=None, description="replica choice; default: the model's")
    max_in_flight: int | None = Field(
        default=None, ge=1, description="requests per replica at once; default: the model's"
    )
    resume: bool | None = Field(default=None, description="continue broken streams; default: the model's")


class ModelConfig(_Strict):
    """One public model name, served by one engine, several replicas, or several versions."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
    task: Task
    engine: EngineConfig | None = Field(default=None, description="shorthand: one engine, no versions")
    engines: tuple[EngineConfig, ...] | None = Field(
        default=None, description="shorthand: replicas, no versions"
    )
    versions: dict[str, VersionConfig] | None = None
    aliases: dict[str, str] = Field(default_factory=dict, description="e.g. stable: v1, latest: v2")
    policy: PolicyName = "least_outstanding"
    session_header: str = Field(
        default="x-session-id", description="sticky sessions: this header, else `user`"
    )
    prefix_chars: int = Field(default=2048, ge=16, description="prompt prefix length prefix_affinity hashes")
    resume: bool | None = Field(
        default=None,
        description="continue a stream broken mid-answer on another replica of its version"
        " (gateway/services/resume.py); default: on for versions with two replicas or more",
    )
    max_in_flight: int | None = Field(
        default=None,
        ge=1,
        description="requests per replica at once, more wait in the fair queue (gateway/services/admission.py);"
        " default: a local engine's max_num_seqs, none for `url`/`dns` engines",
    )

    @model_validator(mode="after")
    def _shape(self) -> ModelConfig:
        given = [k for k in ("engine", "engines", "versions") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'engine', 'engines' or 'versions'")
        versions = self.versions or {}
        for name, version in versions.items():
            if not re.match(_VERSION, name):
                raise ValueError(f"version name {name!r} must be letters, digits, '.', '_' or '-'")
            if version.fallback is not None and version.fallback not in versions:
                raise ValueError(f"versions.{name}.fallback: no version {version.fallback!r}")
            if version.fallback == name:
                raise ValueError(f"versions.{name}.fallback: a version cannot fall back to itself")
        if versions and not any(v.weight > 0 for v in versions.values()):
            raise ValueError("at least one version needs a weight above 0")
        for alias, target in self.aliases.items():
            if not versions:
                raise ValueError("aliases need 'versions'")
            if target not in versions:
                raise ValueError(f"aliases.{alias}: no version {target!r}")
            if alias in versions:
                raise ValueError(f"aliases.{alias}: the name is already a version")
        return self

    def version_configs(self) -> dict[str, VersionConfig]:
        """Versions by name; an unversioned model has one version named ``""``."""
        if self.versions is not None:
            return self.versions
        engines = self.engines if self.engines is not None else (self.engine,)
        return {"": VersionConfig(engines=tuple(e for e in engines if e is not None), weight=1)}

    def replica_limit(self, version: VersionConfig) -> int | None:
        """Requests one replica of ``version`` takes at once (the rest wait at the gateway), or None
        for no limit: the version's or the model's ``max_in_flight``, else, when every replica is a
        local engine, the smallest of their batch sizes (``max_num_seqs``, or vLLM's default on CPU)."""
        if version.max_in_flight is not None:
            return version.max_in_flight
        if self.max_in_flight is not None:
            return self.max_in_flight
        if any(e.local is None for e in version.engines):
            return None  # an engine we did not start: its batch size is unknown
        return min(e.local.max_num_seqs or VLLM_CPU_MAX_NUM_SEQS for e in version.engines if e.local)

    def served_name(self, engine: EngineConfig) -> str:
        """The name ``engine`` knows this model by."""
        return engine.served_name or self.name

    def local_engines(self) -> list[tuple[str, int, LocalEngine]]:
        """(version, replica index, local engine) for every engine Offload must start."""
        return [
            (version, i, e.local)
            for version, vc in self.version_configs().items()
            for i, e in enumerate(vc.engines)
            if e.local is not None
        ]


class KeyCaps(_Strict):
    """Caps for one key's requests, each applied as well as the global one (the lower wins)."""

    max_n: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_messages: int | None = Field(default=None, ge=1)
    max_stop: int | None = Field(default=None, ge=0)
    max_embedding_inputs: int | None = Field(default=None, ge=1)


class KeyConfig(_Strict):
    """One API key, by the SHA-256 of its text (``offload keys new`` makes both): the key itself is
    never stored."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="shown in logs and metrics")
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$", description="sha256: and the key's hex digest")
    models: tuple[str, ...] | None = Field(default=None, description="public model names; absent: every one")
    admin: bool = Field(default=False, description="may use /admin (and /metrics when protected)")
    expires: datetime | None = Field(default=None, description="refused from this time on (ISO 8601)")
    rpm: int | None = Field(default=None, ge=1, description="requests per window (limits.window_seconds)")
    tpm: int | None = Field(default=None, ge=1, description="prompt + completion tokens per window")
    max_concurrent: int | None = Field(default=None, ge=1, description="requests in flight at once")
    weight: float = Field(default=1.0, gt=0, le=1000, description="fair-share weight when models are busy")
    caps: KeyCaps | None = Field(default=None, description="this key's own caps (below the global ones)")


_KEYS = TypeAdapter(tuple[KeyConfig, ...])


class AuthConfig(_Strict):
    """Who may call the gateway. With no keys at all the gateway is keyless (loopback only, unless
    ``OFFLOAD_SERVER__ALLOW_KEYLESS`` says otherwise)."""

    keys: tuple[KeyConfig, ...] = ()
    keys_file: Path | None = Field(
        default=None, description="a YAML file with `keys:`, relative to this file (e.g. a Kubernetes Secret)"
    )
    protect_metrics: bool = Field(default=False, description="/metrics needs an admin key")


class RequestLimits(_Strict):
    """Caps on what one request may ask of an engine; past one, a 400 naming the parameter."""

    max_n: int = Field(default=16, ge=1, description="choices per chat request (`n`)")
    max_tokens: int | None = Field(
        default=None, ge=1, description="`max_tokens` / `max_completion_tokens`; absent: the engine's limit"
    )
    max_messages: int = Field(default=1024, ge=1, description="messages per chat request")
    max_stop: int = Field(default=4, ge=0, description="stop sequences per chat request (OpenAI's limit)")
    max_embedding_inputs: int = Field(default=2048, ge=1, description="inputs per embeddings request")
    window_seconds: float = Field(
        default=60.0, gt=0, description="the window of the keys' rpm and tpm (a minute, as their names say)"
    )
    redis_url: str | None = Field(
        default=None,
        pattern=r"^(redis|rediss|unix)://",
        description="share the keys' counters between gateway replicas through this Redis",
    )

    def narrowed(self, caps: KeyCaps | None) -> RequestLimits:
        """These caps with a key's own applied (the lower of each pair)."""
        if caps is None:
            return self
        mine = caps.model_dump(exclude_none=True)
        merged = {k: v if getattr(self, k) is None else min(v, getattr(self, k)) for k, v in mine.items()}
        return self.model_copy(update=merged)


class AdmissionConfig(_Strict):
    """The queue in front of each model version whose replicas take a bounded number of requests
    (``max_in_flight``): fair across keys by weight (gateway/services/admission.py)."""

    queue_size: int = Field(default=1024, ge=0, description="requests waiting per version at most")
    queue_timeout: float = Field(
        default=30.0, gt=0, description="seconds a request may wait; then 429 (over its share) or 503"
    )
    hold: float = Field(
        default=0.05,
        ge=0,
        description="seconds a slot freed by a key below its share is kept for that key's next request",
    )


class OffloadConfig(_Strict):
    """The whole file."""

    models: tuple[ModelConfig, ...] = Field(min_length=1)
    auth: AuthConfig = AuthConfig()
    limits: RequestLimits = RequestLimits()
    admission: AdmissionConfig = AdmissionConfig()

    @model_validator(mode="after")
    def _unique(self) -> OffloadConfig:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {', '.join(dupes)}")
        ports = [(e.host, e.port) for m in self.models for _, _, e in m.local_engines()]
        clash = sorted({p for h, p in ports if ports.count((h, p)) > 1})
        if clash:
            raise ValueError(f"local engines share a port: {clash}")
        keys = self.auth.keys
        for label, values in (("names", [k.name for k in keys]), ("hashes", [k.hash for k in keys])):
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"API key {label} must be unique; repeated: {', '.join(repeated)}")
        unknown = sorted({m for k in keys for m in k.models or () if m not in names})
        if unknown:
            raise ValueError(f"API keys name models that are not configured: {', '.join(unknown)}")
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
                # float32: bfloat16 SmolLM2 answers garbage on these x86 CPUs (float32 answers correctly).
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
    config = parse_config(text, str(path))
    keys_file = keys_file_of(config, path)
    if keys_file is None:
        return config
    extra = _read_keys(keys_file)
    data = config.model_dump(mode="python")
    data["auth"]["keys"] = [*data["auth"]["keys"], *(k.model_dump(mode="python") for k in extra)]
    try:
        return OffloadConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, f"{path} with {keys_file}")) from None


def keys_file_of(config: OffloadConfig, path: Path) -> Path | None:
    """The keys file ``config`` names, resolved against the configuration file's folder."""
    name = config.auth.keys_file
    return None if name is None else (path.parent / name.expanduser())


def _read_keys(path: Path) -> tuple[KeyConfig, ...]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read keys file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {path}: {exc}") from None
    if not isinstance(data, dict) or set(data) != {"keys"}:
        raise ConfigError(f"invalid keys file {path}: expected a mapping with only 'keys'")
    try:
        return _KEYS.validate_python(data["keys"] or ())
    except ValidationError as exc:
        lines = [f"invalid keys file {path}:"]
        lines += [f"  keys.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None
