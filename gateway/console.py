"""``offload models``, ``offload chat MODEL`` and ``offload status``: the command line of a running
gateway, reached over HTTP like any client (``--url``, ``--api-key``; the environment's
``OFFLOAD_URL`` and ``OFFLOAD_API_KEY`` by default).

What they show comes from the gateway's own endpoints: ``/v1/models`` (versions, weights, aliases),
``/ready`` (each model's state), ``/metrics`` (replicas, their health and load, request and token
counters) and ``/admin/engines`` (the engines ``offload run`` supervises). A failure is one line on
stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from gateway.protocol import paths

DEFAULT_URL = "http://127.0.0.1:8000"
_TIMEOUT = httpx.Timeout(10.0)


class ConsoleError(Exception):
    """A failure to report in one line (the gateway unreachable, an error answer)."""


def default_url() -> str:
    """``OFFLOAD_URL``, else the gateway's default address."""
    return os.environ.get("OFFLOAD_URL") or DEFAULT_URL


def default_api_key() -> str | None:
    """``OFFLOAD_API_KEY``, if set."""
    return os.environ.get("OFFLOAD_API_KEY") or None


# --- plain tables ---------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart, headers first; ``None`` shows as ``-``."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells for {len(headers)} columns: {row}")
        widths = [max(w, len(v)) for w, v in zip(widths, row, strict=True)]
    lines = [list(headers), *cells]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --- /metrics -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplicaState:
    """One replica as the gateway's ``offload_replica_*`` gauges describe it."""

    model: str
    version: str
    replica: str
    up: bool
    in_flight: int


@dataclass(slots=True)
class ModelCounts:
    """Cumulative counters of one model (summed over versions, replicas, endpoints, statuses)."""

    requests: float = 0.0
    errors: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0


@dataclass(frozen=True, slots=True)
class Scrape:
    """What the console reads from one ``/metrics`` page."""

    replicas: tuple[ReplicaState, ...]
    counts: dict[str, ModelCounts]
    in_flight: dict[str, int] = field(default_factory=dict)


_COUNTERS = {
    "offload_requests_total": "requests",
    "offload_request_errors_total": "errors",
    "offload_prompt_tokens_total": "prompt_tokens",
    "offload_completion_tokens_total": "completion_tokens",
}


def parse_metrics(text: str) -> Scrape:
    """Replica health and per-model counters from the gateway's Prometheus text (prometheus_client's
    parser). Requests the gateway could not tie to a configured model (label ``unknown``) are left out."""
    up: dict[tuple[str, str, str], bool] = {}
    load: dict[tuple[str, str, str], int] = {}
    counts: dict[str, ModelCounts] = defaultdict(ModelCounts)
    in_flight: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name in ("offload_replica_up", "offload_replica_in_flight"):
                key = (labels["model"], labels["version"], labels["replica"])
                if sample.name == "offload_replica_up":
                    up[key] = sample.value >= 1
                else:
                    load[key] = int(sample.value)
            elif sample.name == "offload_requests_in_flight":
                in_flight[labels["model"]] = int(sample.value)
            elif sample.name in _COUNTERS and labels.get("model", "unknown") != "unknown":
                entry = counts[labels["model"]]
                attr = _COUNTERS[sample.name]
                setattr(entry, attr, getattr(entry, attr) + sample.value)
    replicas = tuple(
        ReplicaState(model, version, replica, healthy, load.get((model, version, replica), 0))
        for (model, version, replica), healthy in sorted(up.items())
    )
    return Scrape(replicas, dict(counts), in_flight)


@dataclass(frozen=True, slots=True)
class Rates:
    """Per-second rates of one model between two scrapes."""

    model: str
    requests: float
    errors: float
    prompt_tokens: float
    completion_tokens: float


def rates(before: Scrape, after: Scrape, seconds: float) -> list[Rates]:
    """Each model's request, error and token rates between two scrapes ``seconds`` apart (a counter
    that went down, after a restart, counts from zero)."""
    if seconds <= 0:
        raise ValueError("the scrapes must be apart in time")
    result = []
    for model in sorted(set(before.counts) | set(after.counts)):
        old, new = before.counts.get(model, ModelCounts()), after.counts.get(model, ModelCounts())

        def per_second(attr: str, old: ModelCounts = old, new: ModelCounts = new) -> float:
            a, b = float(getattr(old, attr)), float(getattr(new, attr))
            return (b - a if b >= a else b) / seconds

        result.append(
            Rates(
                model,
                per_second("requests"),
                per_second("errors"),
                per_second("prompt_tokens"),
                per_second("completion_tokens"),
            )
        )
    return result


# --- the gateway over HTTP ------------------------------------------------------------------


class Gateway:
    """The running gateway's operational endpoints."""

    def __init__(self, url: str, api_key: str | None, timeout: httpx.Timeout = _TIMEOUT) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def get(self, path: str, accept: Sequence[int] = (200,)) -> httpx.Response:
        """``GET path``; a status outside ``accept`` or no answer at all is a :class:`ConsoleError`."""
        try:
            response = self._http.get(path)
        except httpx.HTTPError as exc:
            raise ConsoleError(
                f"cannot reach the gateway at {self.url} ({exc or type(exc).__name__})"
            ) from None
        if response.status_code not in accept:
            raise ConsoleError(f"{path}: {response.status_code} {_error_message(response)}")
        return response

    def json(self, path: str, accept: Sequence[int] = (200,)) -> Any:
        """``GET path`` as JSON."""
        response = self.get(path, accept)
        try:
            return response.json()
        except ValueError:
            raise ConsoleError(
                f"{path}: the answer is not JSON (is {self.url} an Offload gateway?)"
            ) from None

    def scrape(self) -> Scrape:
        """``/metrics``, parsed."""
        text = self.get(paths.METRICS).text
        try:
            return parse_metrics(text)
        except ValueError as exc:
            raise ConsoleError(f"{paths.METRICS}: not Prometheus text ({exc})") from None

    def engines(self) -> list[dict[str, Any]] | str:
        """The engines ``offload run`` supervises, or why none are listed (``offload serve`` runs
        none; with keys on, only an admin key may see them)."""
        response = self.get(paths.ADMIN_ENGINES, accept=(200, 401, 403, 404))
        if response.status_code == 404:
            return "none run by this gateway (offload serve)"
        if response.status_code in (401, 403):
            return "not shown (they need an admin key: --api-key)"
        data: list[dict[str, Any]] = response.json()["data"]
        return data


def _error_message(response: httpx.Response) -> str:
    """The OpenAI-shaped error's message, else the start of the body."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200].strip() or response.reason_phrase


# --- offload models -------------------------------------------------------------------------


def models_report(models: dict[str, Any], ready: dict[str, Any], scrape: Scrape) -> str:
    """One row per replica of each model version: the version's weight and aliases, the model's
    state from ``/ready``, the replica's health and in-flight requests from ``/metrics``."""
    cards = {card["id"]: card for card in models.get("data", [])}
    states: dict[str, bool] = ready.get("models", {})
    replicas: dict[tuple[str, str], list[ReplicaState]] = defaultdict(list)
    for r in scrape.replicas:
        replicas[(r.model, r.version)].append(r)
    rows: list[list[object]] = []
    for card in cards.values():
        if card.get("parent"):
            continue  # versions and aliases appear under their model
        model = card["id"]
        state = "ready" if states.get(model) else "not ready" if model in states else None
        versions = [v.split(":", 1)[1] for v in card.get("versions") or []] or ["-"]
        aliases_of: dict[str, list[str]] = defaultdict(list)
        for alias, target in (card.get("aliases") or {}).items():
            aliases_of[target.split(":", 1)[1]].append(alias.split(":", 1)[1])
        for version in versions:
            weight = cards.get(f"{model}:{version}", {}).get("weight")
            aliases = ",".join(sorted(aliases_of.get(version, []))) or None
            here: list[ReplicaState | None] = [*replicas.get((model, version), [])] or [None]
            rows.extend(
                [
                    model,
                    state,
                    version,
                    weight,
                    aliases,
                    replica.replica if replica else None,
                    ("up" if replica.up else "down") if replica else None,
                    replica.in_flight if replica else None,
                ]
                for replica in here
            )
    headers = ("model", "state", "version", "weight", "aliases", "replica", "health", "in_flight")
    return table(headers, rows)


def models_command(gateway: Gateway, out: IO[str]) -> int:
    """``offload models``."""
    models = gateway.json(paths.MODELS)
    ready = gateway.json(paths.READY, accept=(200, 503))
    print(models_report(models, ready, gateway.scrape()), file=out)
    return 0


# --- offload status -------------------------------------------------------------------------


def status_report(
    ready: dict[str, Any],
    engines: list[dict[str, Any]] | str,
    before: Scrape,
    after: Scrape,
    seconds: float,
) -> str:
    """Readiness, engines and per-model rates, as printed by ``offload status``."""
    lines = [f"gateway: {ready.get('status', 'unknown')}"]
    states: dict[str, bool] = ready.get("models", {})
    by_model = {r.model: r for r in rates(before, after, seconds)}
    rows = []
    for model in sorted(set(states) | set(by_model)):
        r = by_model.get(model)
        rows.append(
            [
                model,
                "ready" if states.get(model) else "not ready",
                after.in_flight.get(model, 0),
                f"{r.requests:.2f}" if r else "0.00",
                f"{r.errors:.2f}" if r else "0.00",
                f"{r.prompt_tokens:.1f}" if r else "0.0",
                f"{r.completion_tokens:.1f}" if r else "0.0",
            ]
        )
    headers = ("model", "state", "in_flight", "req/s", "err/s", "prompt_tok/s", "completion_tok/s")
    lines += ["", f"models (rates over {seconds:.1f} s):", table(headers, rows)]
    if isinstance(engines, str):
        lines += ["", f"engines: {engines}"]
    else:
        cols = ("name", "state", "pid", "port", "uptime_s", "restarts", "in_flight")
        lines += ["", "engines:", table(cols, [[e.get(c) for c in cols] for e in engines])]
    return "\n".join(lines)


def status_command(gateway: Gateway, interval: float, out: IO[str]) -> int:
    """``offload status``: two scrapes ``interval`` seconds apart give the rates."""
    if interval <= 0:
        raise ConsoleError("--interval must be above 0 seconds")
    before, start = gateway.scrape(), time.monotonic()
    ready = gateway.json(paths.READY, accept=(200, 503))
    engines = gateway.engines()
    time.sleep(max(0.0, interval - (time.monotonic() - start)))  # the sampling interval itself
    after, seconds = gateway.scrape(), time.monotonic() - start
    print(status_report(ready, engines, before, after, seconds), file=out)
    return 0


# --- offload chat ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatOptions:
    """What ``offload chat`` sends with each turn."""

    model: str
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None


def chat_command(url: str, api_key: str | None, options: ChatOptions, lines: IO[str], out: IO[str]) -> int:
    """``offload chat MODEL``: each line read is a user turn; the answer streams to ``out``. Ends at
    EOF or ``/exit``. The conversation is kept, so each turn sees the ones before it."""
    client = openai.OpenAI(
        base_url=url.rstrip("/") + "/v1",
        api_key=api_key or "unused",
        max_retries=0,
        timeout=openai.Timeout(600.0, connect=10.0),
    )
    history: list[ChatCompletionMessageParam] = []
    if options.system:
        history.append({"role": "system", "content": options.system})
    interactive = lines.isatty()
    try:
        while True:
            if interactive:
                print("you> ", end="", flush=True, file=out)
            line = lines.readline()
            if not line or line.strip() == "/exit":
                return 0
            if not line.strip():
                continue
            history.append({"role": "user", "content": line.rstrip("\n")})
            history.append({"role": "assistant", "content": _stream_turn(client, options, history, out)})
    except openai.APIConnectionError as exc:
        raise ConsoleError(f"cannot reach the gateway at {url} ({exc.__cause__ or exc})") from None
    except openai.APIStatusError as exc:
        raise ConsoleError(f"{exc.status_code} {_sdk_message(exc)}") from None
    except openai.APIError as exc:
        raise ConsoleError(exc.message) from None
    finally:
        client.close()


def _stream_turn(
    client: openai.OpenAI, options: ChatOptions, history: list[ChatCompletionMessageParam], out: IO[str]
) -> str:
    """Stream one answer to ``out`` as it arrives; return its text."""
    parts: list[str] = []
    stream = client.chat.completions.create(
        model=options.model,
        messages=history,
        stream=True,
        max_tokens=openai.omit if options.max_tokens is None else options.max_tokens,
        temperature=openai.omit if options.temperature is None else options.temperature,
    )
    with stream:
        for chunk in stream:
            for choice in chunk.choices:
                text = choice.delta.content or ""
                if text:
                    parts.append(text)
                    print(text, end="", flush=True, file=out)
    print(file=out, flush=True)
    return "".join(parts)


def _sdk_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
        if message:
            return str(message)
    return exc.message


# --- dispatch -------------------------------------------------------------------------------

COMMANDS = ("models", "chat", "status")


def main(argv: Sequence[str]) -> int:
    """``offload models|chat|status ...`` (``argv`` starts with the command)."""
    parser = argparse.ArgumentParser(prog="offload", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", help=f"the gateway (default: $OFFLOAD_URL, else {DEFAULT_URL})")
    connection.add_argument(
        "--api-key", help="an API key, when the gateway has keys (default: $OFFLOAD_API_KEY)"
    )
    commands.add_parser(
        "models", parents=[connection], help="each model's versions, weights, aliases, replicas and health"
    )
    chat = commands.add_parser(
        "chat", parents=[connection], help="chat in the terminal, streaming (EOF or /exit ends)"
    )
    chat.add_argument("model", help="a model, version (name:v2) or alias")
    chat.add_argument("--system", help="a system prompt")
    chat.add_argument("--max-tokens", type=int, help="longest answer, in tokens")
    chat.add_argument("--temperature", type=float, help="sampling temperature")
    status = commands.add_parser(
        "status", parents=[connection], help="readiness, engines, per-model request and token rates"
    )
    status.add_argument(
        "--interval", type=float, default=1.0, help="seconds between the two /metrics scrapes"
    )
    args = parser.parse_args(argv)
    return run(
        args.command,
        url=args.url,
        api_key=args.api_key,
        model=getattr(args, "model", None),
        system=getattr(args, "system", None),
        max_tokens=getattr(args, "max_tokens", None),
        temperature=getattr(args, "temperature", None),
        interval=getattr(args, "interval", 1.0),
    )


def run(
    command: str,
    *,
    url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    system: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    interval: float = 1.0,
) -> int:
    """Run ``models``, ``status`` or ``chat``; exit status 0, or 1 with one line on stderr."""
    url = url or default_url()
    api_key = api_key or default_api_key()
    try:
        if command == "chat":
            if not model:
                print(
                    "usage: offload chat MODEL [--system TEXT] [--max-tokens N] [--temperature T]",
                    file=sys.stderr,
                )
                return 2
            options = ChatOptions(model, system, max_tokens, temperature)
            return chat_command(url, api_key, options, sys.stdin, sys.stdout)
        gateway = Gateway(url, api_key)
        try:
            if command == "models":
                return models_command(gateway, sys.stdout)
            if command == "status":
                return status_command(gateway, interval, sys.stdout)
        finally:
            gateway.close()
    except ConsoleError as exc:
        print(f"offload {command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    raise ValueError(f"not a console command: {command}")
