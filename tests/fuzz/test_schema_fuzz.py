"""Schemathesis against the gateway's own ``GET /schema``: a real gateway process (``offload serve``) in
front of the engine simulator, every operation, schema-valid (positive) and schema-breaking (negative)
requests, stateful testing off.

The gateway has API keys and a versioned model with aliases and a shadow. Two cases in three have
their ``model`` replaced by a served name (random names only ever get a 404), and each case comes
from one of four callers: a key for everything (most), a key for two models with a small request
rate (404s for the others, then 429s), a wrong key and no key (401s).

Every answer must be:

* never a 5xx (the simulator is healthy: a 5xx is the gateway's fault);
* a 4xx in OpenAI's error shape, exactly ``{"error": {"message", "type", "param", "code"}}``;
* free of traceback text and of the engine's address (the simulator's ``127.0.0.1:PORT``), body and
  headers;
* what the schema documents: status code, content type, body (each event of a stream too), by
  schemathesis's own checks.

Bounded for the suite: ``OFFLOAD_FUZZ_EXAMPLES`` (50 by default) examples per operation in the
fuzzing phase, plus the boundary cases of schemathesis's coverage phase; about 20 s on 2 cores. The
long run (``make fuzz``) sets a larger count, and ``OFFLOAD_FUZZ_REPORT`` to the path of its JSON
summary (cases, statuses, failures, seconds, seed); ``OFFLOAD_FUZZ_SEED`` replays a run.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import schemathesis
import yaml
from schemathesis import Case
from schemathesis.core.transport import Response

from engines.sim import Knobs, SimConfig
from gateway.keys import hash_key
from tests.integration.servers import ROOT, GatewayProcess
from tests.sim.conftest import RunningSim, serve_sim

EXAMPLES = int(os.environ.get("OFFLOAD_FUZZ_EXAMPLES", "50"))
REPORT = os.environ.get("OFFLOAD_FUZZ_REPORT")
SEED = os.environ.get("OFFLOAD_FUZZ_SEED")
TRACEBACK_MARKERS = ("Traceback", 'File "')
ERROR_KEYS = {"message", "type", "param", "code"}
# Names the gateway serves: the generated `model` is often replaced by one, so that schema-valid
# requests reach the engine (a random name is only ever a 404).
CHAT_MODELS = ("chat", "vchat", "vchat:v1", "vchat:v2", "vchat:stable", "vchat:v9")
EMBEDDING_MODELS = ("embed", "chat")
MODEL_IDS = ("chat", "embed", "vchat", "vchat:v2", "vchat:latest", "nope:v1")
# The gateway has API keys: most cases carry the open key, some the narrow one (two models, a few
# requests a minute: 404s for the others, then 429s), some none or a wrong one (401).
OPEN_KEY, NARROW_KEY = "ofl-fuzz-open-key", "ofl-fuzz-narrow-key"
CALLERS: tuple[dict[str, str], ...] = (
    *[{"Authorization": f"Bearer {OPEN_KEY}"}] * 7,
    {"Authorization": f"Bearer {NARROW_KEY}"},
    {"Authorization": f"Bearer {NARROW_KEY}"},
    {"Authorization": "Bearer ofl-not-a-key"},
    {},
)


def config(sim: RunningSim) -> dict[str, Any]:
    """The fuzzed gateway's configuration: three models (one with versions, aliases and a shadow) on
    the simulator, and two API keys."""
    engine = {"url": sim.base_url, "served_name": "sim"}
    models = [
        {"name": "chat", "task": "chat", "engine": engine},
        {"name": "embed", "task": "embeddings", "engine": engine},
        {
            "name": "vchat",
            "task": "chat",
            "versions": {
                "v1": {"weight": 3, "engines": [engine]},
                "v2": {"weight": 1, "engines": [engine], "shadow": 50},
            },
            "aliases": {"stable": "v1", "latest": "v2"},
        },
    ]
    keys = [
        {"name": "open", "hash": hash_key(OPEN_KEY)},
        {"name": "narrow", "hash": hash_key(NARROW_KEY), "models": ["chat", "embed"], "rpm": 20, "tpm": 5000},
    ]
    return {"models": models, "auth": {"keys": keys}}


@dataclass
class Tally:
    """What the run sent and got, for the summary."""

    started: float = field(default_factory=time.monotonic)
    operations: list[str] = field(default_factory=list)
    seed: int | None = None
    by_status: Counter[str] = field(default_factory=Counter)
    server_errors: int = 0
    bad_error_shapes: int = 0
    leaks: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "examples_per_operation": EXAMPLES,
            "operations": self.operations,
            "cases": sum(self.by_status.values()),
            "by_status": dict(sorted(self.by_status.items())),
            "server_errors": self.server_errors,
            "bad_error_shapes": self.bad_error_shapes,
            "leaks": self.leaks,
            "seconds": round(time.monotonic() - self.started, 1),
            "seed": str(self.seed),  # OFFLOAD_FUZZ_SEED=this replays the run (128 bits: not a JSON number)
        }


TALLY = Tally()


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSim]:
    with serve_sim(SimConfig(model="sim", embedding_dims=16, knobs=Knobs(output_tokens=4))) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(sim: RunningSim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path_factory.mktemp("fuzz"), [], {"OFFLOAD_LOG__ACCESS": "false"})
    gw.config_path.write_text(yaml.safe_dump(config(sim)))
    gw.start()
    yield gw
    gw.stop()
    if REPORT:
        path = Path(REPORT) if Path(REPORT).is_absolute() else ROOT / REPORT
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(TALLY.summary(), option=orjson.OPT_INDENT_2) + b"\n")


@pytest.fixture(scope="module")
def api(gateway: GatewayProcess) -> schemathesis.BaseSchema:
    """The gateway's /schema, loaded by schemathesis from the running gateway."""
    config = schemathesis.Config.from_dict(
        {
            **({"seed": int(SEED)} if SEED else {}),
            "base-url": gateway.base_url,
            "request-timeout": 30,
            "max-stream-events": 100_000,  # read every stream to its end
            "generation": {"mode": "all", "max-examples": EXAMPLES, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
            "checks": {
                "enabled": False,
                "not_a_server_error": {"enabled": True},
                "status_code_conformance": {"enabled": True},
                "content_type_conformance": {"enabled": True},
                "response_schema_conformance": {"enabled": True},
            },
        }
    )
    schema = schemathesis.openapi.from_url(gateway.base_url + "/schema", config=config, timeout=10)
    schema.validate()
    TALLY.operations = [result.ok().label for result in schema.get_all_operations()]
    TALLY.seed = schema.config.seed
    TALLY.started = time.monotonic()
    return schema


@pytest.fixture(scope="module")
def engine_address(sim: RunningSim) -> tuple[str, ...]:
    """How the engine's address could show: its URL, host:port, and the port after any host."""
    host_port = sim.base_url.removeprefix("http://")
    port = host_port.rsplit(":", 1)[1]
    return (sim.base_url, host_port, f"localhost:{port}", f":{port}/")


def _dice(case: Case) -> bytes:
    """Bytes that stay the same for the same generated case (so a failing case replays as it failed)."""
    seen = (case.operation.label, case.path_parameters, case.headers, case.body)
    return hashlib.blake2b(repr(seen).encode(), digest_size=8).digest()


def _aim(case: Case) -> dict[str, str]:
    """Point the case at served models two times in three (a random name is only ever a 404), so that
    valid requests reach the engine; the headers of its caller (see ``CALLERS``)."""
    dice = _dice(case)
    caller = CALLERS[dice[0] % len(CALLERS)]
    body = case.body
    if isinstance(body, dict):
        body.pop("sim", None)  # the simulator's own knobs (delays, faults) are not what is fuzzed
    if dice[1] % 3 == 0:
        return caller
    if case.operation.label == "GET /v1/models/{model}":
        if isinstance(case.path_parameters, dict):
            case.path_parameters["model"] = MODEL_IDS[dice[2] % len(MODEL_IDS)]
        return caller
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        options = EMBEDDING_MODELS if case.operation.path.endswith("embeddings") else CHAT_MODELS
        body["model"] = options[dice[2] % len(options)]
    return caller


def _check(response: Response, addresses: tuple[str, ...], tally: Tally = TALLY) -> list[str]:
    """What is wrong with one answer, tallied (empty when nothing is)."""
    problems: list[str] = []
    status = response.status_code
    tally.by_status[str(status)] += 1
    if status >= 500:
        tally.server_errors += 1
        problems.append(f"server error {status}")
    if 400 <= status < 500:
        try:
            body = orjson.loads(response.content)
            error = body["error"]
            shaped = (
                set(body) == {"error"}
                and set(error) == ERROR_KEYS
                and isinstance(error["message"], str)
                and error["message"] != ""
                and isinstance(error["type"], str)
                and (error["param"] is None or isinstance(error["param"], str))
                and (error["code"] is None or isinstance(error["code"], str))
            )
        except (orjson.JSONDecodeError, KeyError, TypeError):
            shaped = False
        if not shaped:
            tally.bad_error_shapes += 1
            problems.append(f"{status} not in OpenAI's error shape")
    text = response.content.decode("utf-8", "replace")
    headers = " ".join(f"{name}: {value}" for name, values in response.headers.items() for value in values)
    leaked = [m for m in TRACEBACK_MARKERS if m in text] + [a for a in addresses if a in text or a in headers]
    if leaked:
        tally.leaks += 1
        problems.append(f"leaks {leaked}")
    return problems


schema = schemathesis.pytest.from_fixture("api")


@schema.parametrize()
def test_gateway_answers_every_request_cleanly(case: Case, engine_address: tuple[str, ...]) -> None:
    headers = _aim(case)
    response = case.call(headers=headers)
    problems = _check(response, engine_address)
    assert not problems, (
        f"{case.operation.label}: {problems}\n{response.content[:1000]!r}\n{case.as_curl_command(headers)}"
    )
    case.validate_response(response)


def _response(status: int, body: bytes, headers: dict[str, list[str]] | None = None) -> Response:
    request = requests.Request("POST", "http://127.0.0.1:1/v1/chat/completions").prepare()
    return Response(status, headers or {"content-type": ["application/json"]}, body, request, 0.0, True)


@pytest.mark.parametrize(
    ("status", "body", "headers", "problem"),
    [
        (200, b'{"ok":1}', None, None),
        (404, b'{"error":{"message":"m","type":"t","param":null,"code":"c"}}', None, None),
        (502, b'{"error":{"message":"m","type":"t","param":null,"code":"c"}}', None, "server error"),
        (400, b'{"error":{"message":"m","type":"t"}}', None, "error shape"),
        (400, b'{"detail":"bad"}', None, "error shape"),
        (422, b"Bad Request", None, "error shape"),
        (400, b'{"error":{"message":"m","type":"t","param":null,"code":"c"},"x":1}', None, "error shape"),
        (200, b'Traceback (most recent call last):\n  File "x.py"', None, "leaks"),
        (200, b"engine at http://127.0.0.1:9/v1", None, "leaks"),
        (200, b"{}", {"location": ["http://127.0.0.1:9/"]}, "leaks"),
    ],
)
def test_the_checks_catch_what_they_are_for(
    status: int, body: bytes, headers: dict[str, list[str]] | None, problem: str | None
) -> None:
    """The oracle itself: each kind of bad answer is caught (and a good one is not)."""
    tally = Tally()
    problems = _check(_response(status, body, headers), ("http://127.0.0.1:9", "127.0.0.1:9"), tally)
    assert [p for p in problems if problem is None or problem not in p] == []
    assert bool(problems) == (problem is not None)
