"""Caps on what one request may ask of an engine (``limits`` in the configuration).

An engine takes whatever it is sent: 50,000 embedding inputs or ``n: 128`` hold its batch for
everyone else. Past a cap the client gets a 400 naming the parameter, before any engine sees it.
"""

from __future__ import annotations

from gateway.config import KeyCaps, OffloadConfig, RequestLimits
from gateway.errors import InvalidRequestError
from gateway.protocol.chat import ChatCompletionRequest
from gateway.protocol.embeddings import EmbeddingRequest


class Caps:
    """The caps in force; replaced when the configuration reloads."""

    def __init__(self, limits: RequestLimits | None = None) -> None:
        self.limits = limits or RequestLimits()
        self._narrowed: dict[KeyCaps, RequestLimits] = {}

    async def rebuild(self, config: OffloadConfig) -> None:
        """A reloaded configuration's caps (for :class:`gateway.reloader.ConfigReloader`)."""
        self.limits = config.limits
        self._narrowed = {}

    def _for(self, own: KeyCaps | None) -> RequestLimits:
        """The global caps, narrowed by a key's own (merged once per key's caps and kept)."""
        if own is None:
            return self.limits
        caps = self._narrowed.get(own)
        if caps is None:
            caps = self._narrowed[own] = self.limits.narrowed(own)
        return caps

    def check_chat(self, request: ChatCompletionRequest, own: KeyCaps | None = None) -> None:
        """400 when a chat request asks for more than the caps (``own``: the key's) allow."""
        caps = self._for(own)
        if request.n > caps.max_n:
            raise _over("n", request.n, caps.max_n)
        if len(request.messages) > caps.max_messages:
            raise _over("messages", len(request.messages), caps.max_messages, "messages")
        stops = 0 if request.stop is None else 1 if isinstance(request.stop, str) else len(request.stop)
        if stops > caps.max_stop:
            raise _over("stop", stops, caps.max_stop, "stop sequences")
        if caps.max_tokens is not None:
            for param in ("max_tokens", "max_completion_tokens"):
                value = getattr(request, param)
                if value is not None and value > caps.max_tokens:
                    raise _over(param, value, caps.max_tokens)

    def check_embeddings(self, request: EmbeddingRequest, own: KeyCaps | None = None) -> None:
        """400 when an embeddings request carries more inputs than the cap (``own``: the key's) allows."""
        value = request.input
        count = 1 if isinstance(value, str) or (value and isinstance(value[0], int)) else len(value)
        cap = self._for(own).max_embedding_inputs
        if count > cap:
            raise _over("input", count, cap, "inputs")


def _over(param: str, value: int, cap: int, what: str = "") -> InvalidRequestError:
    noun = f" {what}" if what else ""
    return InvalidRequestError(
        f"'{param}' asks for {value}{noun}; this gateway allows at most {cap}.", param=param
    )
