"""CORS for browser clients, off unless origins are configured (``OFFLOAD_SERVER__CORS_ORIGINS``).

Starlette's :class:`~starlette.middleware.cors.CORSMiddleware` wraps the whole gateway, outside
:class:`~gateway.api.front.FrontDoor`: a preflight (``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``) carries no API key and is answered here, before any key is
checked; every other request goes on unchanged, its response given the CORS headers (errors too,
so a page can read a 401 or a 429 and its ``Retry-After``). With no origins configured nothing is
wrapped: no cost per request.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.middleware.cors import CORSMiddleware

from gateway.api.asgi import ASGIApp

METHODS = ("GET", "POST")
"""Everything the gateway serves is a GET or a POST (a preflight's OPTIONS is answered before)."""

# Any header the page asks for: the OpenAI SDKs send their own (openai-organization, openai-project,
# openai-beta, x-stainless-*: a set that grows with each release) beside authorization,
# content-type, x-request-id and x-session-id. Starlette echoes the requested ones in the preflight.
HEADERS = ("*",)

EXPOSED = (
    "x-request-id",
    "x-offload-model",
    "x-offload-version",
    "x-offload-replica",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)
"""Response headers a page may read beyond the CORS-safelisted ones."""

MAX_AGE = 600
"""Seconds a browser may reuse a preflight's answer."""


def with_cors(app: ASGIApp, origins: Sequence[str]) -> ASGIApp:
    """``app`` behind CORS for ``origins`` (``"*"``: any); ``app`` itself when there are none.

    Credentials (cookies, HTTP authentication managed by the browser) are never allowed, so ``"*"``
    stays safe: a page sends its API key in the ``Authorization`` header, which needs none.
    """
    if not origins:
        return app
    return CORSMiddleware(
        app,
        allow_origins=tuple(origins),
        allow_methods=METHODS,
        allow_headers=HEADERS,
        allow_credentials=False,
        expose_headers=EXPOSED,
        max_age=MAX_AGE,
    )
