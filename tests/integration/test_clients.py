"""The clients people build with, against real vLLM engines through the gateway: the OpenAI Python SDK
(sync and async, raw and streaming responses), the OpenAI Node SDK, LangChain, LlamaIndex, and every
curl example in the README run as written.

LangChain and LlamaIndex live in ``.venv-clients`` (apart from the gateway's environment: llama-index
needs a newer setuptools than vLLM's CPU build pins) and the Node SDK under ``tests/clients/node``; each
runs as a subprocess that prints one JSON object. ``make test`` installs both; when one is missing the
test fails saying so (it is never skipped).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shlex
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from openai import AsyncOpenAI, OpenAI

from tests.integration.conftest import CHAT, EMBED, Engines
from tests.integration.servers import ROOT, GatewayProcess

CLIENTS = ROOT / "tests" / "clients"
CLIENTS_PYTHON = ROOT / ".venv-clients" / "bin" / "python"
NODE_DIR = CLIENTS / "node"
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello in three words."}]
_INSTALL_HINT = "`make test` installs it (or run its client set-up step by hand)"


# --- the OpenAI Python SDK ------------------------------------------------------------------


def test_raw_response_exposes_the_headers_and_parses(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=CHAT,
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
        extra_headers={"X-Request-Id": "clients-raw-1"},
    )
    assert raw.status_code == 200
    assert raw.headers["x-request-id"] == "clients-raw-1"
    assert raw.headers["x-offload-model"] == CHAT
    assert raw.headers["x-offload-replica"]  # (and x-offload-version, for a versioned model)
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == CHAT
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens <= 8


def test_streaming_response_yields_sse_lines_that_end_with_done(client: OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
        model=CHAT, messages=MESSAGES, max_tokens=8, temperature=0, stream=True
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-offload-model"] == CHAT
        data = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert sum(1 for c in chunks for choice in c["choices"] if choice.get("finish_reason")) == 1


def test_a_stream_with_include_usage_ends_with_usage_that_adds_up(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=CHAT,
        messages=MESSAGES,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert 0 < usage.completion_tokens <= 16
    assert len(content_chunks) <= usage.completion_tokens  # vLLM sends one chunk per token, or fewer
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_embeddings_as_floats_and_as_base64_are_the_same_vectors(client: OpenAI) -> None:
    texts = ["hello world", "goodbye"]
    floats = client.embeddings.create(model=EMBED, input=texts, encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1]
    assert all(isinstance(x, float) for x in floats.data[0].embedding)
    # the SDK's default asks for base64 and decodes it; the raw answer shows the encoding itself
    raw = client.embeddings.with_raw_response.create(model=EMBED, input=texts, encoding_format="base64")
    encoded = raw.http_response.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    decoded = struct.unpack(f"<{len(base64.b64decode(encoded)) // 4}f", base64.b64decode(encoded))
    assert len(decoded) == len(floats.data[0].embedding) == 384
    assert decoded == pytest.approx(floats.data[0].embedding, abs=1e-5)
    default = client.embeddings.create(model=EMBED, input=texts)
    assert default.data[1].embedding == pytest.approx(floats.data[1].embedding, abs=1e-5)
    assert default.usage.prompt_tokens > 0


def test_models_list_and_retrieve(client: OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert CHAT in ids and EMBED in ids
    model = client.models.retrieve(CHAT)
    assert (model.id, model.object) == (CHAT, "model")


def test_sdk_errors_are_the_usual_exception_types(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=CHAT, messages=MESSAGES, temperature="hot")  # type: ignore[arg-type]
    assert bad.value.body is not None and bad.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=EMBED, input=[])


async def test_the_async_client_chats_streams_and_embeds_concurrently(gateway: GatewayProcess) -> None:
    async with AsyncOpenAI(
        base_url=gateway.base_url + "/v1", api_key="unused", max_retries=0, timeout=120
    ) as aclient:

        async def streamed() -> tuple[str, int]:
            stream = await aclient.chat.completions.create(
                model=CHAT,
                messages=MESSAGES,
                max_tokens=12,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            parts, usage = [], 0
            async for chunk in stream:
                parts += [c.delta.content or "" for c in chunk.choices]
                usage = chunk.usage.completion_tokens if chunk.usage else usage
            return "".join(parts), usage

        completion, (text, tokens), embedding, raw = await asyncio.wait_for(
            asyncio.gather(
                aclient.chat.completions.create(model=CHAT, messages=MESSAGES, max_tokens=12, temperature=0),
                streamed(),
                aclient.embeddings.create(model=EMBED, input="hello"),
                aclient.chat.completions.with_raw_response.create(
                    model=CHAT, messages=MESSAGES, max_tokens=4
                ),
            ),
            timeout=180,
        )
    assert completion.choices[0].message.content
    assert text == completion.choices[0].message.content  # greedy: the same answer either way
    assert 0 < tokens <= 12
    assert len(embedding.data[0].embedding) == 384
    assert raw.headers["x-request-id"] and raw.parse().model == CHAT


# --- client libraries in their own processes -------------------------------------------------


class TrapProxy:
    """A loopback listener that the client processes get as their HTTP(S) proxy: libraries that honour
    the proxy variables (requests, httpx, urllib: tiktoken, nltk, telemetry) would connect here for
    anything beyond loopback, and the test fails if anything did."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            self.connections += 1
            conn.close()

    def env(self) -> dict[str, str]:
        """Proxy variables pointing at the trap (loopback itself goes direct)."""
        names = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
        return {
            **dict.fromkeys(names, self.url),
            **{n.lower(): self.url for n in names},
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def trap() -> Iterator[TrapProxy]:
    proxy = TrapProxy()
    yield proxy
    proxy.close()


def run_client(argv: list[str], gateway: GatewayProcess, trap: TrapProxy, cwd: Path = ROOT) -> dict[str, Any]:
    """Run one client check against the gateway; return the JSON object it printed."""
    env = {
        **os.environ,
        **trap.env(),
        "OFFLOAD_BASE_URL": gateway.base_url + "/v1",
        "CHAT_MODEL": CHAT,
        "EMBED_MODEL": EMBED,
        "LANGCHAIN_TRACING_V2": "false",
        "DO_NOT_TRACK": "1",
    }
    env.pop("OPENAI_BASE_URL", None)
    env.pop("OPENAI_API_KEY", None)
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{argv[-1]} failed:\n{done.stderr[-3000:]}"
    assert trap.connections == 0, f"{argv[-1]} tried to reach the network (through the proxy)"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def clients_python() -> str:
    if not CLIENTS_PYTHON.exists():
        pytest.fail(
            f"{CLIENTS_PYTHON.relative_to(ROOT)} is missing: {_INSTALL_HINT} from tests/clients/requirements.txt"
        )
    return str(CLIENTS_PYTHON)


def test_node_sdk_chats_streams_embeds_and_lists(gateway: GatewayProcess, trap: TrapProxy) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"`node` (Node.js 18 or later) is not installed: {_INSTALL_HINT}")
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        pytest.fail(
            f"the OpenAI Node SDK is not installed in {NODE_DIR.relative_to(ROOT)}: {_INSTALL_HINT} (npm ci)"
        )
    out = run_client([node, "check.mjs"], gateway, trap, cwd=NODE_DIR)
    chat, stream, embeddings = out["chat"], out["stream"], out["embeddings"]
    assert chat["content"] and chat["finish_reason"] in ("stop", "length")
    assert chat["model"] == chat["served_model"] == CHAT
    assert chat["request_id"]
    assert stream["content"] == chat["content"]  # greedy: the same answer streamed or not
    assert stream["finish_reasons"] in (["stop"], ["length"])
    assert stream["usage"]["completion_tokens"] == chat["usage"]["completion_tokens"]
    assert (
        stream["usage"]["total_tokens"]
        == stream["usage"]["prompt_tokens"] + stream["usage"]["completion_tokens"]
    )
    assert embeddings == {**embeddings, "count": 2, "dims": [384, 384], "first_is_number": True}
    assert CHAT in out["models"] and EMBED in out["models"]
    assert out["not_found"] == {"status": 404, "type": "NotFoundError", "code": "model_not_found"}


def test_langchain_chat_openai_and_openai_embeddings(gateway: GatewayProcess, trap: TrapProxy) -> None:
    out = run_client([clients_python(), str(CLIENTS / "python" / "langchain_check.py")], gateway, trap)
    invoke, stream = out["invoke"], out["stream"]
    assert invoke["content"] and invoke["model"] == CHAT
    assert invoke["finish_reason"] in ("stop", "length")
    assert stream["content"] == invoke["content"] and stream["chunks"] > 2
    assert stream["usage"]["output_tokens"] == invoke["usage"]["output_tokens"] > 0
    assert len(out["batch"]) == 2 and all(out["batch"])
    assert out["embed_documents"] == [384, 384] and out["embed_query"] == 384


def test_llamaindex_openai_like_llm_and_embedding(gateway: GatewayProcess, trap: TrapProxy) -> None:
    out = run_client([clients_python(), str(CLIENTS / "python" / "llamaindex_check.py")], gateway, trap)
    assert out["complete"]
    assert out["chat"]["role"] == "assistant" and out["chat"]["content"]
    assert out["stream_chat"]["content"] == out["chat"]["content"]  # greedy
    assert out["stream_chat"]["deltas"] > 1
    assert out["embedding"] == out["query_embedding"] == 384


# --- every curl example in the README -------------------------------------------------------

README = ROOT / "README.md"
_FENCED = re.compile(r"^```(?:bash|sh|shell)[ \t]*\n(.*?)^```", re.M | re.S)
_README_URLS = ("http://127.0.0.1:8000", "http://localhost:8000")
_SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "&"}
_STATUS_MARK = "\n__HTTP_STATUS__"


def readme_curls(markdown: str) -> list[str]:
    """The ``curl`` commands of the README's bash/sh/shell blocks (continuation lines joined)."""
    commands = []
    for block in _FENCED.findall(markdown):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith("curl "):
                commands.append(line)
    return commands


CURLS = readme_curls(README.read_text())


def _demo_keys() -> list[dict[str, Any]]:
    keys: list[dict[str, Any]] = yaml.safe_load((ROOT / "deploy" / "examples" / "keys.yaml").read_text())[
        "auth"
    ]["keys"]
    return keys


@pytest.fixture(scope="module")
def readme_gateway(engines: Engines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway shaped like the README's examples: SmolLM2 as the canary of deploy/examples/canary.yaml
    (``smollm2`` v1 90% and v2 10%, aliases ``stable`` and ``latest``, on the session's two SmolLM2
    engines) and ``minilm``, keyless."""
    gw = GatewayProcess(tmp_path_factory.mktemp("readme-gateway"), engines.canary_models()).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def keyed_gateway(engines: Engines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The keys example (deploy/examples/keys.yaml: its two demo keys) in front of the session's engines."""
    gw = GatewayProcess(tmp_path_factory.mktemp("keyed-gateway"), engines.gateway_models())
    gw.config_path.write_text(
        yaml.safe_dump({"models": engines.gateway_models(), "auth": {"keys": _demo_keys()}})
    )
    gw.start()
    yield gw
    gw.stop()


def test_the_readme_has_curl_examples() -> None:
    assert len(CURLS) >= 3, "README.md should show curl examples for chat, streaming and embeddings"


@pytest.fixture(scope="module")
def socket_gateway(engines: Engines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The session's models served on a Unix socket too (``OFFLOAD_SERVER__UDS``), for the examples
    that use ``curl --unix-socket``."""
    workdir = tmp_path_factory.mktemp("uds-gateway")
    sock = workdir / "offload.sock"
    gw = GatewayProcess(workdir, engines.gateway_models(), env={"OFFLOAD_SERVER__UDS": str(sock)}).start()
    gw.socket_path = sock  # type: ignore[attr-defined]
    yield gw
    gw.stop()


@pytest.mark.parametrize("command", CURLS, ids=[f"curl-{i}" for i in range(len(CURLS))])
def test_readme_curl_example_works_as_written(command: str, request: pytest.FixtureRequest) -> None:
    """The command runs with the real curl binary (no shell): the README's address (or Unix socket) is
    replaced by the test gateway's, and a time limit and a status line are added; anything after a pipe
    or a redirection is left out. Examples with the demo keys go to a gateway that has them."""
    argv = shlex.split(command)
    cut = next((i for i, arg in enumerate(argv) if arg in _SHELL_OPERATORS), len(argv))
    argv = argv[:cut]
    if "--unix-socket" in argv:
        gateway: GatewayProcess = request.getfixturevalue("socket_gateway")
        argv[argv.index("--unix-socket") + 1] = str(gateway.socket_path)  # type: ignore[attr-defined]
    else:
        keyed = any("ofl-demo-" in arg for arg in argv)
        gateway = request.getfixturevalue("keyed_gateway" if keyed else "readme_gateway")
        for old in _README_URLS:
            argv = [arg.replace(old, gateway.base_url) for arg in argv]
        assert any(arg.startswith(gateway.base_url) for arg in argv), (
            f"no request to {_README_URLS[0]}: {command}"
        )
    url = next(arg for arg in argv[1:] if arg.startswith(("http://", "https://")))
    curl = shutil.which("curl")
    assert curl is not None, "curl is not installed"
    done = subprocess.run(
        [curl, *argv[1:], "--max-time", "120", "--write-out", _STATUS_MARK + "%{http_code}"],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, f"curl failed ({done.returncode}): {done.stderr}"
    body, _, status = done.stdout.rpartition(_STATUS_MARK)
    if body.startswith("HTTP/"):  # -i: the head comes first
        body = body.split("\r\n\r\n", 1)[1]
    assert status.startswith("2"), f"{status} {body[:500]}"
    check_shape(httpx.URL(url).path, body)


def check_shape(path: str, body: str) -> None:
    """The answer has the shape its endpoint promises (JSON, or SSE ending with ``[DONE]``)."""
    if path == "/metrics":
        assert "offload_requests_total" in body
        return
    if body.lstrip().startswith("data:"):
        events = [line[len("data:") :].strip() for line in body.splitlines() if line.startswith("data:")]
        assert events[-1] == "[DONE]", events[-3:]
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks and all(c["object"] == "chat.completion.chunk" or c.get("usage") for c in chunks)
        assert not any("error" in c for c in chunks), chunks
        return
    answer = json.loads(body)
    assert "error" not in answer, answer
    if path == "/v1/chat/completions":
        assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["content"]
    elif path == "/v1/embeddings":
        assert answer["object"] == "list" and answer["data"][0]["embedding"]
    elif path == "/v1/models":
        assert answer["object"] == "list" and answer["data"]
    elif path.startswith("/v1/models/"):
        assert answer["object"] == "model"
    elif path in ("/health", "/ready"):
        assert answer["status"] in ("ok", "ready", "degraded")
