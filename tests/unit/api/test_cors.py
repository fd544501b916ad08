"""CORS around the gateway: nothing without origins; with them, preflights answered before the app
(so before any API key is checked), other requests passed on with the CORS headers added. And the
setting that names the origins."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.api.asgi import Message, Receive, Scope, Send
from gateway.api.cors import EXPOSED, with_cors
from gateway.settings import ServerSettings, Settings

APP = "https://app.example"


class Inner:
    """The gateway stand-in: answers 401 (as FrontDoor does without a key) and counts its calls."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 401, "headers": [(b"x-request-id", b"r1")]})
        await send({"type": "http.response.body", "body": b"{}"})


def http_scope(method: str, headers: dict[str, str]) -> Scope:
    return {
        "type": "http",
        "method": method,
        "path": "/v1/chat/completions",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }


async def call(app: Any, scope: Scope) -> tuple[int, dict[str, str]]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}


def preflight_headers(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-request-id, x-stainless-lang",
    }


def test_no_origins_wrap_nothing() -> None:
    inner = Inner()

    assert with_cors(inner, ()) is inner


async def test_a_preflight_from_an_allowed_origin_is_answered_without_reaching_the_gateway() -> None:
    inner = Inner()

    status, headers = await call(with_cors(inner, (APP,)), http_scope("OPTIONS", preflight_headers(APP)))

    assert status == 200
    assert inner.scopes == []  # no key was asked for
    assert headers["access-control-allow-origin"] == APP
    assert headers["access-control-allow-headers"] == preflight_headers(APP)["Access-Control-Request-Headers"]
    assert set(headers["access-control-allow-methods"].split(", ")) == {"GET", "POST"}
    assert "access-control-allow-credentials" not in headers


async def test_a_preflight_from_another_origin_gets_no_allow_origin() -> None:
    inner = Inner()

    status, headers = await call(
        with_cors(inner, (APP,)), http_scope("OPTIONS", preflight_headers("https://evil.example"))
    )

    assert status == 400
    assert "access-control-allow-origin" not in headers
    assert inner.scopes == []


async def test_a_request_from_an_allowed_origin_reaches_the_gateway_and_its_answer_is_readable() -> None:
    inner = Inner()

    status, headers = await call(with_cors(inner, (APP,)), http_scope("POST", {"Origin": APP}))

    assert status == 401 and len(inner.scopes) == 1
    assert headers["access-control-allow-origin"] == APP
    assert "Origin" in headers["vary"]
    assert headers["access-control-expose-headers"].split(", ") == list(EXPOSED)
    assert headers["x-request-id"] == "r1"


async def test_any_origin_is_answered_with_a_star_and_never_with_credentials() -> None:
    app = with_cors(Inner(), ("*",))

    _, simple = await call(app, http_scope("POST", {"Origin": "https://anyone.example"}))
    _, preflight = await call(app, http_scope("OPTIONS", preflight_headers("https://anyone.example")))

    assert simple["access-control-allow-origin"] == "*"
    assert preflight["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in simple
    assert "access-control-allow-credentials" not in preflight


async def test_an_options_that_is_not_a_preflight_and_lifespan_go_on_to_the_gateway() -> None:
    inner = Inner()
    app = with_cors(inner, (APP,))

    status, _ = await call(app, http_scope("OPTIONS", {"Origin": APP}))  # no Access-Control-Request-Method
    await app({"type": "lifespan"}, None, None)  # type: ignore[arg-type]

    assert status == 401
    assert [s["type"] for s in inner.scopes] == ["http", "lifespan"]


# The setting -------------------------------------------------------------------------------------


def test_cors_is_off_by_default() -> None:
    assert ServerSettings().cors_origins == ()


def test_origins_come_from_the_environment_as_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_SERVER__CORS_ORIGINS", '["https://app.example", "http://localhost:5173"]')

    assert Settings().server.cors_origins == ("https://app.example", "http://localhost:5173")


def test_origins_are_kept_in_lower_case_as_browsers_send_them() -> None:
    assert ServerSettings(cors_origins=("HTTPS://App.Example",)).cors_origins == ("https://app.example",)


@pytest.mark.parametrize(
    "origin", ["https://app.example/", "https://app.example/chat", "app.example", "null", "", "https://"]
)
def test_what_is_not_an_origin_is_refused_with_an_example(origin: str) -> None:
    with pytest.raises(ValidationError, match="is not an origin"):
        ServerSettings(cors_origins=(origin,))
