"""Typed process settings, read once from the environment (prefix ``OFFLOAD_``) and passed down by group.

Nested groups use ``__``: ``OFFLOAD_UPSTREAM__REQUEST_TIMEOUT=30``. What is served (models, engines)
is not here but in the configuration file (:mod:`gateway.config`), selected by ``OFFLOAD_CONFIG``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# What a browser sends in its Origin header: scheme, host, optional port; nothing after.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+")


class ServerSettings(BaseModel):
    """Where the gateway listens, how large and how slow a request may be, which browsers may call it."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # SIGTERM: seconds still serving (not ready) before the listener closes, then the most seconds
    # requests and streams in flight may take to finish (gateway/drain.py).
    drain_grace: float = Field(default=5.0, ge=0)
    drain_timeout: float = Field(default=25.0, gt=0)
    # All request headers together (names and values); past it 431. The HTTP parser sets no limit of
    # its own: a raw request head (request line and framing too) past twice this is answered 431 and
    # its connection closed before it is parsed to the end (gateway/main.py).
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    # Serving beyond loopback with no API key configured must be asked for in so many words.
    allow_keyless: bool = False
    # Seconds an idle connection is kept open after a response. Longer than the 60 s idle timeout of
    # most load balancers (AWS ALB, ingress-nginx, Azure): a backend that closes first races the
    # proxy reusing the connection, and the client gets a 502. 75 s is nginx's own keepalive_timeout.
    # (Google Cloud's load balancer keeps backend connections 600 s: raise it past that there.)
    keep_alive_timeout: int = Field(default=75, ge=1)
    # Seconds a connection has to send a complete request head (request line and headers), from
    # when it opens or from the first byte of its next request; past it the connection is closed.
    # uvicorn has no such limit: a client that connects and says nothing, or trickles its headers,
    # would be held forever (gateway/main.py).
    header_timeout: float = Field(default=10.0, gt=0)
    # Browser origins allowed to call the gateway (CORS), e.g. ["https://app.example"]; ["*"] any
    # origin. Empty: no CORS at all. Credentials (cookies) are never allowed: keys travel in the
    # Authorization header, which needs no credentials mode.
    cors_origins: tuple[str, ...] = ()
    # A Unix socket serving the same API (file mode 0660, so a container sharing it through a volume
    # and the socket's group can use it), beside host:port, or alone with `tcp` false. A stale socket
    # file left by a killed run is replaced at start; a path that is not a socket is refused. Local
    # only: it does not count as reachable from other machines for the keyless check.
    uds: Path | None = None
    # Serve HTTP on host:port. False only together with `uds` (the socket alone).
    tcp: bool = True
    # The gRPC door (gateway/rpc, off by default): the same services on this port, bound on `host`
    # like HTTP (so the keyless-exposure rule applies to it the same way).
    grpc_port: int | None = Field(default=None, ge=1, le=65535)
    # Gateway processes serving the same port and socket (gateway/workers.py): a number, or "auto" for
    # the CPU cores this process may run on. One process relays on one core; a GPU node's engines
    # emit more tokens than one core relays. Each worker routes, probes and limits on its own;
    # /metrics answers with the totals of all.
    workers: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = 1

    def worker_count(self) -> int:
        """``workers`` as a number: "auto" is the cores this process may run on."""
        return len(os.sched_getaffinity(0)) if self.workers == "auto" else self.workers

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        for origin in origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin.lower()):
                raise ValueError(
                    f"{origin!r} is not an origin: scheme://host[:port], no path or trailing slash "
                    '(e.g. "https://app.example"), or "*"'
                )
        return tuple(origin.lower() for origin in origins)  # browsers send them in lower case

    @model_validator(mode="after")
    def _listens(self) -> ServerSettings:
        if not self.tcp and self.uds is None:
            raise ValueError("tcp=false needs uds: the gateway would listen nowhere")
        if self.grpc_port is not None and self.tcp and self.grpc_port == self.port:
            raise ValueError(f"grpc_port {self.grpc_port} is the HTTP port too: choose another")
        return self


class UpstreamSettings(BaseModel):
    """How the gateway talks to engines."""

    connect_timeout: float = Field(default=5.0, gt=0)
    # Whole-request limit for non-streaming calls and for a stream's first byte; engine timeout -> 504.
    request_timeout: float = Field(default=600.0, gt=0)
    # Longest silence allowed inside a stream before it is failed in-band.
    stream_idle_timeout: float = Field(default=300.0, gt=0)
    # SSE comment sent to the client while the engine is silent, so proxies keep the stream open.
    keepalive_interval: float = Field(default=15.0, gt=0)
    # The longest event an engine may send in a stream (an event is held whole until its end comes);
    # past it the stream fails as broken. vLLM's are small, but its first may carry prompt_logprobs.
    max_event_bytes: int = Field(default=32 * 1024 * 1024, ge=64 * 1024)
    # The largest whole answer read from an engine (non-streaming chat, embeddings): past it the call
    # fails as broken instead of growing the gateway's memory without bound. Roomy on purpose: 2,048
    # embeddings of 4,096 floats written as JSON come to about 170 MB.
    max_answer_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024)
    max_connections: int = Field(default=1000, ge=1)
    # Other replicas tried when one fails before anything reached the client.
    max_retries: int = Field(default=2, ge=0)
    # Streams broken mid-answer continued on another replica, at most this many times each.
    max_resumes: int = Field(default=2, ge=0)
    max_shadow_in_flight: int = Field(default=32, ge=0)
    # On-demand engines: how long a request may wait for one to load, and how many may wait.
    on_demand_wait: float = Field(default=600.0, gt=0)
    on_demand_max_waiting: int = Field(default=256, ge=1)


class HealthSettings(BaseModel):
    """Active probing of engine ``/health`` endpoints."""

    probe_interval: float = Field(default=2.0, gt=0)
    probe_timeout: float = Field(default=2.0, gt=0)
    # Consecutive failed probes or requests before a replica is taken out (refused: at once).
    failure_threshold: int = Field(default=3, ge=1)
    # Circuit breaker: first wait before a failed replica is tried again (doubles, up to the max).
    cooldown: float = Field(default=2.0, gt=0)
    max_cooldown: float = Field(default=30.0, gt=0)
    # Engine /metrics scraping for load-aware routing (0 disables).
    scrape_interval: float = Field(default=2.0, ge=0)
    retry_after_seconds: int = Field(default=5, ge=1)
    # Re-resolving `dns` engines (replica discovery, e.g. Kubernetes headless services); 0 disables.
    dns_interval: float = Field(default=10.0, ge=0)


class ReloadSettings(BaseModel):
    """Configuration reload (also on SIGHUP)."""

    # Half a second: a revoked API key is refused within a second of its file changing.
    watch_interval: float = Field(default=0.5, ge=0, description="file change polling; 0 disables")


class LogSettings(BaseModel):
    """structlog output."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"
    access: bool = True


class TracingSettings(BaseModel):
    """OpenTelemetry traces (gateway/tracing.py): off unless ``endpoint`` is set."""

    # An OTLP/HTTP collector, e.g. http://127.0.0.1:4318 (/v1/traces is added unless the URL ends
    # with it). Unset: no tracing at all, and the OpenTelemetry SDK is not even imported.
    endpoint: str | None = None
    service_name: str = "offload"
    # The share of new traces recorded (a request carrying a traceparent follows its caller's choice).
    sample_ratio: float = Field(default=1.0, ge=0, le=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, endpoint: str | None) -> str | None:
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"{endpoint!r} is not an OTLP/HTTP URL (http://host:4318 or https://...)")
        return endpoint


class Settings(BaseSettings):
    """All settings of one Offload process."""

    model_config = SettingsConfigDict(env_prefix="OFFLOAD_", env_nested_delimiter="__", extra="ignore")

    config: Path | None = None
    data_dir: Path = Path.home() / ".cache" / "offload"
    server: ServerSettings = ServerSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    health: HealthSettings = HealthSettings()
    reload: ReloadSettings = ReloadSettings()
    log: LogSettings = LogSettings()
    tracing: TracingSettings = TracingSettings()

    @property
    def models_dir(self) -> Path:
        """Where packaged models are prepared."""
        return self.data_dir / "models"

    @property
    def logs_dir(self) -> Path:
        """Where local engines write their logs."""
        return self.data_dir / "logs"
