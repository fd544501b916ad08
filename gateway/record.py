"""What the gateway learns about one request while serving it (for the summary log and metrics)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gateway.config import KeyCaps


@dataclass(slots=True)
class RequestRecord:
    """Filled in by the service while it serves; read by the access log and metrics when it ends.

    Holds no prompt text and no engine address: everything here may be logged.
    """

    request_id: str
    route: str = ""
    key: str | None = None  # the API key's configured name (never the key itself)
    allowed_models: frozenset[str] | None = None  # what the key may use; None: every model
    weight: float = 1.0  # the key's fair-share weight
    caps: KeyCaps | None = None  # the key's own caps, beside the global ones
    model: str | None = None  # as requested (for the log)
    routed_model: str | None = None  # a configured model name (safe as a metric label)
    in_flight: bool = False
    version: str | None = None  # metric label of the serving version ("-" when unversioned)
    public_model: str | None = None  # what the response reports: chat:v2
    replica: str | None = None
    retries: int = 0
    resumes: int = 0  # a broken stream continued on another replica (gateway/services/resume.py)
    stream: bool = False
    status: int = 0
    error_type: str | None = None
    started: float = field(default_factory=time.perf_counter)
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def elapsed(self) -> float:
        """Seconds since the request arrived."""
        return time.perf_counter() - self.started
