"""API keys: made, hashed and looked up. Only the SHA-256 of a key is ever kept.

A key is ``ofl-`` and 43 URL-safe characters (32 random bytes): with that much entropy a plain SHA-256
is as safe at rest as a slow password hash, and cheap enough to compute per request. Lookup is by that
digest, then a constant-time comparison of it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.config import AuthConfig, KeyCaps, OffloadConfig
from gateway.protocol import paths

PREFIX = "ofl-"
_HASH_PREFIX = "sha256:"
_BEARER = "bearer "


def new_key() -> str:
    """A fresh random key (shown once to whoever made it)."""
    return PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The form a key is stored in: ``sha256:`` and the hex digest of its text."""
    return _HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key a request carries: ``Authorization: Bearer KEY`` (what the OpenAI SDK sends), else
    ``api-key`` (Azure's clients) or ``x-api-key``."""
    other = None
    for name, value in headers:
        if name == b"authorization":
            text = value.decode("latin-1").strip()
            if text[: len(_BEARER)].lower() == _BEARER:
                return text[len(_BEARER) :].strip() or None
        elif name in (b"api-key", b"x-api-key") and other is None:
            other = value.decode("latin-1").strip() or None
    return other


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid key belongs to, and what it may do."""

    name: str
    digest: str  # the stored SHA-256 hex digest
    models: frozenset[str] | None  # None: every model
    admin: bool
    expires: float | None  # epoch seconds
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    weight: float = 1.0
    caps: KeyCaps | None = None

    @property
    def limited(self) -> bool:
        """Whether any rate or concurrency limit applies to this key."""
        return self.rpm is not None or self.tpm is not None or self.max_concurrent is not None


class KeyRing:
    """The configured keys by digest; replaced whole when the configuration reloads."""

    def __init__(self, auth: AuthConfig | None = None) -> None:
        self._by_hash: Mapping[str, Principal] = {}
        self.enabled = False
        """True when any key is configured: requests then need one (an attribute: read per request)."""
        self.protect_metrics = False
        self.replace(auth or AuthConfig())

    async def rebuild(self, config: OffloadConfig) -> None:
        """A reloaded configuration's keys (for :class:`gateway.reloader.ConfigReloader`)."""
        self.replace(config.auth)

    def replace(self, auth: AuthConfig) -> None:
        """Use these keys from now on (a key that is gone is refused at once; streams it already
        opened finish)."""
        keys = auth.keys
        self._by_hash = {
            k.hash.removeprefix(_HASH_PREFIX): Principal(
                k.name,
                k.hash.removeprefix(_HASH_PREFIX),
                None if k.models is None else frozenset(k.models),
                k.admin,
                None if k.expires is None else k.expires.timestamp(),
                k.rpm,
                k.tpm,
                k.max_concurrent,
                k.weight,
                k.caps,
            )
            for k in keys
        }
        self.enabled = bool(self._by_hash)
        self.protect_metrics = auth.protect_metrics

    def guards(self, path: str) -> bool:
        """Whether a path outside ``/v1/`` needs an admin key (when keys are on): ``/admin/...``,
        and ``/metrics`` if so configured. ``/health`` and ``/ready`` stay open for probes."""
        if path == paths.ADMIN or path.startswith(paths.ADMIN + "/"):
            return True
        return self.protect_metrics and path == paths.METRICS

    def lookup(self, key: str | None) -> Principal | None:
        """The principal of ``key``, or None for a missing, unknown or expired key."""
        if not key:
            return None
        digest = hashlib.sha256(key.encode()).hexdigest()
        principal = self._by_hash.get(digest)
        # The lookup hashes what the client sent, so its timing says nothing about a stored key;
        # the comparison of the digests is constant-time all the same.
        if principal is None or not hmac.compare_digest(principal.digest, digest):
            return None
        if principal.expires is not None and time.time() >= principal.expires:
            return None
        return principal
