"""Every HTTP path the gateway serves or calls, declared once.

The OpenAI paths are the same on the gateway and on a vLLM engine (the gateway calls the engine on
the path it was called on); the operational ones are Offload's (and vLLM's, for ``/health`` and
``/metrics``).
"""

from __future__ import annotations

API_PREFIX = "/v1/"
"""Requests under this prefix get a request id, a summary log line and request metrics."""
CHAT_COMPLETIONS = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
MODELS = "/v1/models"
MODEL = "/v1/models/{model}"
"""One model, version or alias (the metric label of ``/v1/models/NAME``)."""

HEALTH = "/health"
READY = "/ready"
METRICS = "/metrics"
SCHEMA = "/schema"
"""The OpenAPI description of the OpenAI endpoints (open, like ``/health``)."""
PLAYGROUND = "/playground"
"""The chat playground page (``/`` redirects to it); its API calls carry the key typed into it."""
DOCS = "/docs"
"""The browsable API docs: Swagger UI rendering ``/schema``, from files the gateway serves."""
ADMIN = "/admin"
"""Everything under it needs an admin key when keys are configured."""
ADMIN_ENGINES = ADMIN + "/engines"
