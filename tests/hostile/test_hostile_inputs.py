"""Hostile inputs against a real gateway process with the engine simulator behind it, one regression
test each (issue 10). For every one: no 5xx, OpenAI's error shape on a 4xx, nothing internal in the
body (no traceback, no engine address), and the gateway still answers /health afterwards (checked
after every test by ``conftest.still_serving``, with its log free of unhandled errors).

Defects these found, fixed in the gateway:

* JSON nested 255 to 1024 levels deep was parsed (orjson reads 1024 levels) but could not be written
  back for the engine (orjson writes 254): a 500 from every route. Now a 400 ``invalid_json``
  (``gateway/services/parsing.py``).
* ``"stream": "true"`` (or ``1``) was read as a stream by the gateway while the engine, relayed the
  body as sent, may read it otherwise: the simulator answered JSON and the client got a broken
  stream. Now a 400 naming ``stream``, as OpenAI answers (``gateway/protocol/chat.py``).
* What the HTTP parser refuses (both Transfer-Encoding and Content-Length, a NUL in a header, a bad
  request line) was answered with uvicorn's plain-text 400. Now in OpenAI's error shape
  (``gateway/serving.py``).
"""

from __future__ import annotations

import contextlib
import socket
import time
import unicodedata
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.hostile.conftest import HEADER_TIMEOUT
from tests.integration.servers import ROOT, GatewayProcess
from tests.integration.servers import read_until_closed as until_closed
from tests.sim.conftest import RunningSim

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
MODEL = "/v1/models/{model}"  # the route of /v1/models/NAME in the log
BOUND = 15.0  # the longest any raw-socket exchange may take
JSON = {"content-type": "application/json"}


def chat(**fields: object) -> dict[str, object]:
    return {"model": "chat", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], **fields}


def nested(depth: int) -> bytes:
    """``depth`` arrays, one inside the other."""
    return b"[" * depth + b"]" * depth


# Checks ------------------------------------------------------------------------------------------


def no_internals(text: str, engine: RunningSim) -> None:
    """Nothing of the gateway's insides in an answer: no traceback, no engine address, no paths."""
    for leak in ("Traceback", 'File "', engine.base_url, "127.0.0.1", "localhost", str(ROOT)):
        assert leak not in text, f"{leak!r} in the answer: {text[:500]}"


def refused(
    response: httpx.Response,
    engine: RunningSim,
    status: int,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, object]:
    """``response`` is a ``status`` in OpenAI's error shape (naming ``param``, with ``code``); its error."""
    assert response.status_code == status, f"{response.status_code}: {response.text[:500]}"
    assert response.headers["content-type"].startswith("application/json")
    no_internals(response.text, engine)
    return openai_error(response.content, param, code)


def openai_error(body: bytes, param: str | None = None, code: str | None = None) -> dict[str, object]:
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def not_5xx(response: httpx.Response, engine: RunningSim) -> None:
    """Any answer but a server error; a 4xx in OpenAI's shape."""
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    no_internals(response.text, engine)
    if response.status_code >= 400:
        openai_error(response.content)


# Raw sockets (where an HTTP client would refuse to send the input, or would hide the answer) --------


def connect(gateway: GatewayProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gateway.port), timeout=BOUND)


def exchange(gateway: GatewayProcess, data: bytes) -> bytes:
    """Send ``data`` and read until the gateway closes the connection (at most :data:`BOUND` s)."""
    with connect(gateway) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)  # (closed while sending: the answer is waiting to be read)
        return read_until_closed(sock)[0]


def read_until_closed(sock: socket.socket, within: float = BOUND) -> tuple[bytes, float]:
    """Everything received until the gateway closed the connection, and the seconds that took."""
    return until_closed(sock, within)


def responses(raw: bytes) -> list[tuple[int, bytes]]:
    """The (status, body) of each HTTP/1.1 response with a Content-Length in ``raw``, in order."""
    found = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep and head.startswith(b"HTTP/1.1 "), f"not a response: {raw[:300]!r}"
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        found.append((status, rest[:length]))
        raw = rest[length:]
    return found


# Deeply nested JSON ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(nested(100_000), id="100k-levels-of-["),
        pytest.param(b'{"model":"chat","messages":' + nested(100_000) + b"}", id="100k-levels-in-messages"),
        pytest.param(b'{"model":"chat","messages":' + nested(1025) + b"}", id="1025-levels"),
    ],
)
def test_json_nested_past_what_the_parser_reads_is_a_400(
    http: httpx.Client, engine: RunningSim, body: bytes
) -> None:
    refused(http.post(CHAT, content=body, headers=JSON), engine, 400, code="invalid_json")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param(
            CHAT,
            b'{"model":"chat","messages":[{"role":"user","content":[{"type":"text","text":"x","deep":'
            + nested(500)
            + b"}]}]}",
            id="500-levels-in-content",
        ),
        pytest.param(CHAT, orjson.dumps(chat())[:-1] + b',"extra":' + nested(300) + b"}", id="chat"),
        pytest.param(
            CHAT, orjson.dumps(chat(stream=True))[:-1] + b',"extra":' + nested(300) + b"}", id="chat-stream"
        ),
        pytest.param(
            EMBEDDINGS, b'{"model":"embed","input":"x","extra":' + nested(300) + b"}", id="embeddings"
        ),
    ],
)
def test_json_nested_deeper_than_can_be_relayed_is_a_400_not_a_500(
    http: httpx.Client, engine: RunningSim, path: str, body: bytes
) -> None:
    # Regression: orjson reads 1024 levels but writes 254, so these parsed and then failed as a 500
    # when the body was serialised for the engine.
    error = refused(http.post(path, content=body, headers=JSON), engine, 400, code="invalid_json")

    assert "254 levels" in str(error["message"])


def test_json_nested_exactly_as_deep_as_can_be_relayed_is_served(
    http: httpx.Client, engine: RunningSim
) -> None:
    # The object itself is one level: 253 arrays inside it make the 254 that can be written back.
    ok = orjson.dumps(chat())[:-1] + b',"extra":' + nested(253) + b"}"
    too_deep = orjson.dumps(chat())[:-1] + b',"extra":' + nested(254) + b"}"

    assert http.post(CHAT, content=ok, headers=JSON).status_code == 200
    refused(http.post(CHAT, content=too_deep, headers=JSON), engine, 400, code="invalid_json")


# Large bodies and arrays ------------------------------------------------------------------------


def test_a_10_mb_string_is_a_413(http: httpx.Client, engine: RunningSim) -> None:
    body = orjson.dumps(chat(messages=[{"role": "user", "content": "a" * 10_000_000}]))

    refused(http.post(CHAT, content=body, headers=JSON), engine, 413, code="request_too_large")


def test_a_10_mb_body_sent_chunked_without_a_length_is_a_413(http: httpx.Client, engine: RunningSim) -> None:
    body = orjson.dumps({"model": "embed", "input": "a" * 10_000_000})

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1 << 20):
            yield body[start : start + (1 << 20)]

    refused(http.post(EMBEDDINGS, content=chunks(), headers=JSON), engine, 413, code="request_too_large")


def test_a_7_mb_string_within_the_body_limit_is_served(http: httpx.Client, engine: RunningSim) -> None:
    text = "a" * 7_000_000

    embedded = http.post(EMBEDDINGS, json={"model": "embed", "input": text})
    answered = http.post(CHAT, json=chat(messages=[{"role": "user", "content": text}]))

    assert embedded.status_code == 200, embedded.text[:500]
    assert len(embedded.json()["data"]) == 1
    # The engine refuses a prompt longer than its context: its 400, relayed in OpenAI's shape.
    refused(answered, engine, 400)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        pytest.param(
            CHAT, chat(messages=[{"role": "user", "content": "a"}] * 100_000), "messages", id="messages"
        ),
        pytest.param(CHAT, chat(stop=["x"] * 100_000), "stop", id="stop"),
        pytest.param(EMBEDDINGS, {"model": "embed", "input": ["a"] * 100_000}, "input", id="input-strings"),
        pytest.param(
            EMBEDDINGS, {"model": "embed", "input": [[1]] * 100_000}, "input", id="input-token-arrays"
        ),
    ],
)
def test_100k_element_arrays_are_refused_naming_the_parameter(
    http: httpx.Client, engine: RunningSim, path: str, body: dict[str, object], param: str
) -> None:
    refused(http.post(path, json=body), engine, 400, param=param)


def test_one_100k_token_input_is_one_input_for_the_engine_to_judge(
    http: httpx.Client, engine: RunningSim
) -> None:
    not_5xx(http.post(EMBEDDINGS, json={"model": "embed", "input": [1] * 100_000}), engine)


# NUL and invalid UTF-8 ---------------------------------------------------------------------------

_CONTENT = b'{"model":"chat","max_tokens":4,"messages":[{"role":"user","content":"%s"}]}'


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"model":"chat",\x00"messages":[]}', id="nul-between-tokens"),
        pytest.param(_CONTENT % b"a\x00b", id="raw-nul-in-a-string"),
        pytest.param(_CONTENT % b"a\xff\xfeb", id="invalid-utf8-in-a-string"),
        pytest.param(_CONTENT % b"a\\ud800b", id="lone-surrogate-in-a-string"),
        pytest.param(
            b'{"model":"ch\xffat","messages":[{"role":"user","content":"a"}]}', id="invalid-utf8-in-model"
        ),
        pytest.param(b"\xef\xbb\xbf" + _CONTENT % b"a", id="byte-order-mark"),
        pytest.param((_CONTENT % b"a").decode().encode("utf-16"), id="utf-16"),
    ],
)
def test_nul_and_invalid_utf8_in_the_body_are_invalid_json(
    http: httpx.Client, engine: RunningSim, body: bytes
) -> None:
    refused(http.post(CHAT, content=body, headers=JSON), engine, 400, code="invalid_json")


def test_an_escaped_nul_in_a_string_is_valid_json_and_relayed(http: httpx.Client, engine: RunningSim) -> None:
    answer = http.post(CHAT, content=_CONTENT % b"a\\u0000b", headers=JSON)

    assert answer.status_code == 200, answer.text[:500]
    assert answer.json()["choices"][0]["message"]["content"]


def test_invalid_utf8_in_header_values_is_served(http: httpx.Client, engine: RunningSim) -> None:
    headers = {
        "x-session-id": "a\xff\xfeb".encode("latin-1"),
        "x-request-id": "id\x85\xff".encode("latin-1"),  # \x85 is a C1 control: not echoed
        "authorization": "Bearer \xff\xfe".encode("latin-1"),
    }

    answer = http.post(CHAT, json=chat(), headers=headers)

    assert answer.status_code == 200, answer.text[:500]
    assert "\x85" not in answer.headers["x-request-id"]


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET /health HTTP/1.1\r\nHost: gateway\r\nX-A: a\x00b\r\n\r\n", id="nul-in-a-header"),
        pytest.param(b"GET /v1/models/a\x00b HTTP/1.1\r\nHost: gateway\r\n\r\n", id="nul-in-the-path"),
        pytest.param(
            b"GET /v1/models/\xff\xfe HTTP/1.1\r\nHost: gateway\r\n\r\n", id="invalid-utf8-in-the-path"
        ),
        pytest.param(b"GET /health HTTP/1.1\nHost: gateway\n\n", id="bare-line-feeds"),
    ],
)
def test_a_request_head_the_parser_refuses_is_a_400_in_openai_shape(
    gateway: GatewayProcess, engine: RunningSim, head: bytes
) -> None:
    # Regression: uvicorn answered these with a plain-text 400.
    answers = responses(exchange(gateway, head))

    assert [status for status, _ in answers] == [400]
    openai_error(answers[0][1], code="invalid_request")
    no_internals(answers[0][1].decode(), engine)


# Headers -----------------------------------------------------------------------------------------


def test_a_huge_header_is_a_431(http: httpx.Client, engine: RunningSim) -> None:
    answer = http.get("/v1/models", headers={"x-big": "a" * 40_000})

    refused(answer, engine, 431, code="request_header_fields_too_large")


def test_many_headers_are_a_431(http: httpx.Client, engine: RunningSim) -> None:
    answer = http.post(CHAT, json=chat(), headers=[(f"x-h{i}", "v") for i in range(5000)])

    refused(answer, engine, 431, code="request_header_fields_too_large")


def test_a_megabyte_of_headers_is_a_431_before_it_ends(gateway: GatewayProcess, engine: RunningSim) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n" + b"X-A: b\r\n" * 130_000 + b"\r\n"

    answers = responses(exchange(gateway, head))

    assert [status for status, _ in answers] == [431]
    openai_error(answers[0][1], code="request_header_fields_too_large")


def test_a_host_header_naming_another_host_changes_nothing(http: httpx.Client, engine: RunningSim) -> None:
    for host in ("evil.example", "evil.example:1234", "127.0.0.1:1"):
        answer = http.post(CHAT, json=chat(), headers={"host": host})
        missing = http.get("/v1/models/nope", headers={"host": host})

        assert answer.status_code == 200, answer.text[:500]
        assert host not in answer.text and all(host not in v for v in answer.headers.values())
        refused(missing, engine, 404, code="model_not_found")
        assert host not in missing.text


def test_an_absolute_request_target_naming_another_host_is_served_here(gateway: GatewayProcess) -> None:
    raw = exchange(
        gateway, b"GET http://evil.example/health HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    )

    assert responses(raw) == [(200, b'{"status":"ok"}')]


# Request smuggling -------------------------------------------------------------------------------

_BODY = orjson.dumps(chat())
_CHUNKED = b"%x\r\n%s\r\n0\r\n\r\n" % (len(_BODY), _BODY)
_SMUGGLED = b"GET /v1/models/smuggled HTTP/1.1\r\nHost: gateway\r\n\r\n"
_POST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            _POST
            + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(_CHUNKED)
            + _CHUNKED
            + _SMUGGLED,
            id="CL.TE",
        ),
        pytest.param(
            _POST + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" + _CHUNKED + _SMUGGLED,
            id="TE.CL",
        ),
        pytest.param(
            _POST
            + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % (5 + len(_SMUGGLED))
            + _SMUGGLED,
            id="CL.TE-empty-chunk",
        ),
        pytest.param(
            _POST + b"Content-Length: %d\r\nContent-Length: 5\r\n\r\n" % len(_BODY) + _BODY + _SMUGGLED,
            id="two-content-lengths",
        ),
        pytest.param(
            _POST
            + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
            + _CHUNKED
            + _SMUGGLED,
            id="two-transfer-encodings",
        ),
        pytest.param(
            _POST + b"Transfer-Encoding: chunked, identity\r\n\r\n" + _CHUNKED + _SMUGGLED,
            id="chunked-not-last",
        ),
        pytest.param(
            _POST
            + b"Transfer-Encoding : chunked\r\nContent-Length: %d\r\n\r\n" % len(_BODY)
            + _BODY
            + _SMUGGLED,
            id="space-before-colon",
        ),
        pytest.param(
            _POST
            + b"Transfer-Encoding:\r\n chunked\r\nContent-Length: %d\r\n\r\n" % len(_BODY)
            + _BODY
            + _SMUGGLED,
            id="folded-header",
        ),
        pytest.param(
            _POST
            + b"Transfer-Encoding: xchunked\r\nContent-Length: %d\r\n\r\n" % len(_BODY)
            + _BODY
            + _SMUGGLED,
            id="unknown-coding",
        ),
        pytest.param(
            _POST + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n" + _BODY + _SMUGGLED,
            id="chunk-size-overflow",
        ),
    ],
)
def test_request_smuggling_shapes_are_a_400_never_two_requests(
    gateway: GatewayProcess, engine: RunningSim, request_bytes: bytes
) -> None:
    mark = gateway.log_mark()

    answers = responses(exchange(gateway, request_bytes))  # read until the gateway closes

    assert len(answers) == 1, f"{len(answers)} responses to one request: {answers}"
    status, body = answers[0]
    assert status == 400, answers
    openai_error(body)
    no_internals(body.decode(), engine)
    assert "smuggled" not in gateway.log(mark)


# Slowloris ---------------------------------------------------------------------------------------


def test_headers_dripped_byte_by_byte_are_cut_off_at_the_header_timeout(gateway: GatewayProcess) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nX-Slow: " + b"a" * 10_000
    start = time.monotonic()
    closed = False
    with connect(gateway) as sock:
        for byte in head:  # one byte, then up to 0.05 s for the gateway to close the connection
            if time.monotonic() - start > BOUND:
                break
            try:
                sock.sendall(bytes([byte]))
                sock.settimeout(0.05)
                if sock.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
    took = time.monotonic() - start

    assert closed, f"still open after {took:.1f} s of dripped headers"
    assert took <= HEADER_TIMEOUT + 3, f"closed after {took:.2f} s; the header timeout is {HEADER_TIMEOUT} s"


# Model names -------------------------------------------------------------------------------------

_NAMES = {
    "traversal": "../../etc/passwd",
    "traversal-to-a-model": "chat/../chat",
    "encoded-traversal": "..%2F..%2Fadmin",
    "control-characters": "chat\n\r\x1b[31mred\x07\x00\x7f\x85",
    "forged-log-line": 'chat\n2026-01-01 [error] forged="yes"',
    "bidi-override": "chat\u202egnp.exe",
    "10k-long": "m" * 10_000,
}


def log_is_clean(text: str) -> None:
    """No control character in the log but the line ends: a client cannot forge lines or drive a
    terminal through it."""
    bad = {ch for ch in text if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cf")}
    assert not bad, f"raw control characters in the gateway log: {sorted(map(repr, bad))}"


@pytest.mark.parametrize("name", list(_NAMES.values()), ids=list(_NAMES))
def test_model_names_with_path_or_control_characters_are_refused_and_escaped_in_the_log(
    gateway: GatewayProcess, http: httpx.Client, engine: RunningSim, name: str
) -> None:
    mark = gateway.log_mark()

    answers = [
        http.post(CHAT, json=chat(model=name)),
        http.post(CHAT, json=chat(model=name, stream=True)),
        http.post(EMBEDDINGS, json={"model": name, "input": "a"}),
        http.get("/v1/models/" + "".join(f"%{b:02X}" for b in name.encode())),  # every byte encoded
    ]

    for answer in answers:
        assert answer.status_code in (400, 404), f"{answer.status_code}: {answer.text[:300]}"
        refused(answer, engine, answer.status_code)
    gateway.wait_for_log(MODEL, since=mark)  # the summary lines are written once the answers are sent
    log = gateway.log(mark)
    log_is_clean(log)
    if not name.isprintable():
        assert name not in log
    assert "m" * 300 not in log, "a 10k model name logged whole"


# Field types -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["int8", "", "FLOAT", "base64 ", None, 1])
def test_an_unknown_encoding_format_is_a_400_naming_it(
    http: httpx.Client, engine: RunningSim, value: object
) -> None:
    answer = http.post(EMBEDDINGS, json={"model": "embed", "input": "a", "encoding_format": value})

    refused(answer, engine, 400, param="encoding_format")


@pytest.mark.parametrize("value", ["true", "false", "True", 1, 0, "yes", None, {}])
def test_stream_that_is_not_a_boolean_is_a_400_naming_it(
    http: httpx.Client, engine: RunningSim, value: object
) -> None:
    # Regression: "true" was read as a stream here and relayed as sent; the simulator answered JSON
    # and the client got a 200 stream holding only an engine error.
    answer = http.post(CHAT, json=chat(stream=value))

    refused(answer, engine, 400, param="stream")


def test_stream_true_and_false_as_booleans_still_work(http: httpx.Client) -> None:
    with http.stream("POST", CHAT, json=chat(stream=True)) as streamed:
        body = streamed.read()
    whole = http.post(CHAT, json=chat(stream=False))

    assert streamed.status_code == 200 and body.rstrip().endswith(b"data: [DONE]")
    assert whole.status_code == 200 and whole.json()["choices"]
