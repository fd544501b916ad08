"""The ``offload`` command: ``run`` (engines + gateway), ``serve`` (gateway only), ``prepare`` (models),
``engines`` (list/start/stop/restart/logs of a running ``offload run``), ``keys new``, and ``models``,
``chat MODEL``, ``status`` (a running gateway from the terminal: :mod:`gateway.console`)."""

from __future__ import annotations

import argparse
import gc
import ipaddress
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import uvicorn
import yaml
from pydantic import ValidationError

from gateway.config import ConfigError, KeyConfig, OffloadConfig, load_config
from gateway.logging import configure_logging
from gateway.reloader import hold_hangups
from gateway.serving import DrainingServer, ListenError, RequestHeadGuard, bind_tcp, listeners
from gateway.settings import ServerSettings, Settings
from gateway.workers import WorkerPool, WorkerSlot, stop_with_parent

if TYPE_CHECKING:
    from collections.abc import Callable

    from engines.supervisor import Supervisor
    from gateway.api.asgi import ASGIApp
    from gateway.api.front import FrontDoor
    from gateway.drain import Drain
    from gateway.services.engine_control import EngineControl
    from gateway.worker_metrics import WorkerPeers


_log = structlog.get_logger("offload.main")


def app_from_env() -> ASGIApp:
    """Factory for ``uvicorn --factory gateway.main:app_from_env`` (settings from the environment).

    uvicorn's own options apply there: ``--timeout-keep-alive`` and ``--http
    gateway.serving:RequestHeadGuard`` (default limits) give what :func:`serve` sets up itself."""
    settings = Settings()
    configure_logging(settings.log)
    return served_app(settings, create_app_checked(settings, load_config(settings.config)))


def served_app(settings: Settings, app: FrontDoor) -> ASGIApp:
    """What uvicorn serves: the gateway, behind CORS when origins are configured."""
    from gateway.api.cors import with_cors

    return with_cors(app, settings.server.cors_origins)


def create_app_checked(
    settings: Settings,
    config: OffloadConfig,
    engines: EngineControl | None = None,
    drain: Drain | None = None,
    peers: WorkerPeers | None = None,
) -> FrontDoor:
    """The app, imported late so ``offload prepare`` stays light."""
    from gateway.app import create_app

    return create_app(settings, config, engines, drain=drain, peers=peers)


def serve(settings: Settings, config: OffloadConfig, engines: EngineControl | None = None) -> None:
    """Serve the gateway until SIGINT/SIGTERM (uvloop + httptools, one worker), then drain.

    It listens on ``server.host:server.port`` (unless ``server.tcp`` is false) and on the Unix
    socket ``server.uds`` when set: both bound here and handed to uvicorn, which serves and drains
    them alike. A place it cannot listen on ends the process with a message saying why."""
    from gateway.drain import Drain

    server = settings.server
    slot = WorkerSlot.from_env()
    if slot is not None:  # one of several workers (gateway/workers.py): its sockets are inherited
        from gateway.worker_metrics import WorkerPeers

        stop_with_parent()
        _serve_on(slot.sockets(), settings, config, engines, Drain(), WorkerPeers(slot.peers))
        return
    try:
        if server.grpc_port is not None:  # gRPC binds it at startup: a port in use is refused here, in words
            bind_tcp(server.host, server.grpc_port).close()
        workers = server.worker_count()
        if workers > 1:
            raise SystemExit(WorkerPool(settings, workers).run())
        with listeners(server.host, server.port if server.tcp else None, server.uds) as sockets:
            _serve_on(sockets, settings, config, engines, Drain())
    except ListenError as exc:
        raise SystemExit(f"offload: {exc}") from None


_RUN_WORKERS = (
    "`offload run` serves with one worker: its engines are supervised by the gateway process. For "
    "several workers, run the engines apart (compose, Kubernetes) and the gateway with "
    "`offload serve --workers N`."
)


def _serve_on(
    sockets: list[socket.socket],
    settings: Settings,
    config: OffloadConfig,
    engines: EngineControl | None,
    drain: Drain,
    peers: WorkerPeers | None = None,
) -> None:
    app = served_app(settings, create_app_checked(settings, config, engines, drain, peers))
    # Everything built so far lives as long as the process: keep it out of the garbage collector's
    # full passes (fewer objects to walk while serving), and collect the young generation less often
    # (a request allocates thousands of short-lived objects; the default 700 ran it several times each).
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    server = settings.server
    head_limit = 2 * server.max_header_bytes  # the raw head; FrontDoor checks the parsed headers exactly
    uvicorn_config = uvicorn.Config(
        app,
        loop="uvloop",
        http=RequestHeadGuard.configured(server.header_timeout, head_limit),
        h11_max_incomplete_event_size=head_limit,  # (used only if h11 replaces httptools)
        # After a response; longer than load balancers' idle timeout (gateway/settings.py).
        timeout_keep_alive=server.keep_alive_timeout,
        access_log=False,  # the gateway writes its own summary line per request
        proxy_headers=False,  # no trusted proxy in front by default; saves work per request
        server_header=False,
        log_level="warning",
        # A backstop only: the drain ends open streams itself at drain_timeout.
        timeout_graceful_shutdown=int(server.drain_timeout) + 5,
    )
    DrainingServer(uvicorn_config, drain, server.drain_grace, server.drain_timeout).run(sockets)


def exposure_problem(settings: Settings, config: OffloadConfig) -> str | None:
    """Why the gateway must not start as configured (None: it may). Secure by default: reachable
    from other machines only with API keys, unless keyless mode is asked for explicitly."""
    host = settings.server.host
    # The Unix socket is local only; TCP (HTTP, and gRPC when on) is bound on `host`.
    on_host = settings.server.tcp or settings.server.grpc_port is not None
    if config.auth.keys or _is_loopback(host) or not on_host:
        return None
    if settings.server.allow_keyless:
        _log.warning("serving without API keys beyond loopback (OFFLOAD_SERVER__ALLOW_KEYLESS)", host=host)
        return None
    return (
        f"refusing to serve on {host} without API keys: anyone who can reach it could use every model. "
        "Add keys (`offload keys new NAME` prints one and its entry for `auth.keys`), or set "
        "OFFLOAD_SERVER__ALLOW_KEYLESS=true to serve keyless on purpose."
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost: it may resolve to anything


def keys_cli(args: argparse.Namespace) -> int:
    """``offload keys new NAME``: a new key, printed once, and the entry to paste (its hash only)."""
    if args.action != "new" or not args.name:
        usage = (
            "offload keys new NAME [--models A,B] [--admin] [--expires ISO-8601]"
            " [--rpm N] [--tpm N] [--max-concurrent N] [--weight W]"
        )
        print(f"usage: {usage}", file=sys.stderr)
        return 2
    from gateway.keys import hash_key, new_key

    key = new_key()  # printed only once the entry is valid
    try:
        entry = KeyConfig(
            name=args.name,
            hash=hash_key(key),
            models=tuple(m for m in args.models.split(",") if m) if args.models else None,
            admin=args.admin,
            expires=args.expires,
            rpm=args.rpm,
            tpm=args.tpm,
            max_concurrent=args.max_concurrent,
            **({} if args.weight is None else {"weight": args.weight}),
        )
    except ValidationError as exc:
        print(f"offload: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    print(f"API key for {entry.name} (shown once; only its hash is kept):\n\n  {key}\n")
    print("Add this entry under `auth: keys:` in the configuration, or under `keys:` in its keys file:\n")
    body = entry.model_dump(mode="json", exclude_defaults=True)
    print(yaml.safe_dump([body], sort_keys=False).rstrip())
    return 0


def run(settings: Settings, config: OffloadConfig) -> int:
    """Prepare models, start the configured local engines, serve, then stop the engines."""
    from engines.control import LocalEngineControl
    from engines.supervisor import EngineStartError, Supervisor
    from gateway.local_engines import engine_specs

    specs = engine_specs(config, settings.models_dir)
    supervisor = Supervisor(specs, settings.models_dir, settings.logs_dir)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal to the handler
    # that was there before it: make that an orderly exit, so the engines are stopped below.
    signal.signal(signal.SIGTERM, _stop_requested)
    signal.signal(signal.SIGINT, _stop_requested)
    try:
        supervisor.reap_stale(settings.data_dir / "run" / "engines.json")
        supervisor.prepare_models()
        supervisor.start_all()
        supervisor.wait_all()
        supervisor.start_watching()
    except EngineStartError as exc:
        print(f"offload: {exc}", file=sys.stderr)
        _shutdown(supervisor)
        return 1
    except StopRequested:
        print("\noffload: interrupted; stopping engines", file=sys.stderr)
        _shutdown(supervisor)
        return 130
    try:
        print(f"offload: gateway on {_doors(settings)} (Ctrl-C stops it and its engines)", flush=True)
        serve(settings, config, LocalEngineControl(supervisor))
    except StopRequested:
        pass  # the gateway has drained; now the engines
    finally:
        _shutdown(supervisor)
    return 0


def _doors(settings: Settings) -> str:
    """Where the gateway answers: its HTTP URL, Unix socket and gRPC port, as configured."""
    server = settings.server
    doors = [f"http://{server.host}:{server.port}/v1"] if server.tcp else []
    if server.uds is not None:
        doors.append(f"unix:{server.uds}")
    if server.grpc_port is not None:
        doors.append(f"grpc://{server.host}:{server.grpc_port}")
    return ", ".join(doors)


def _shutdown(supervisor: Supervisor) -> None:
    # A second Ctrl-C must not cut the engines' shutdown short (they would linger as orphans).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    supervisor.stop_all()


class StopRequested(Exception):
    """SIGINT or SIGTERM reached ``offload run``."""


def _stop_requested(signum: int, frame: object) -> None:
    raise StopRequested(signal.Signals(signum).name)


def engines_cli(args: argparse.Namespace, settings: Settings) -> int:
    """``offload engines [list|start|stop|restart|logs] [NAME]`` against a running gateway."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    base = args.url or f"http://{settings.server.host}:{settings.server.port}"
    action = args.action
    if action != "list" and not args.name:
        print(f"offload engines {action}: name the engine (see `offload engines list`)", file=sys.stderr)
        return 2
    name = urllib.parse.quote(args.name or "", safe="")
    url, method = {
        "list": (f"{base}/admin/engines", "GET"),
        "logs": (f"{base}/admin/engines/{name}/logs?lines={args.lines}", "GET"),
    }.get(action, (f"{base}/admin/engines/{name}/{action}", "POST"))
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=60) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        print(
            f"offload engines: {json.loads(exc.read()).get('error', {}).get('message', exc)}", file=sys.stderr
        )
        return 1
    except OSError as exc:
        print(f"offload engines: cannot reach the gateway at {base} ({exc})", file=sys.stderr)
        return 1
    if action == "list":
        cols = ("name", "state", "pid", "port", "uptime_s", "restarts", "in_flight", "on_demand", "last_exit")
        rows = [[str(e.get(c) if e.get(c) is not None else "-") for c in cols] for e in body["data"]]
        # then what each engine uses (gateway/engine_usage.py)
        header = [*cols, *_USAGE_COLUMNS]
        rows = [row + _usage_cells(e) for row, e in zip(rows, body["data"], strict=True)]
        widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(header)]
        for line in [header, *rows]:
            print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    elif action == "logs":
        print("\n".join(body["lines"]))
    else:
        print(f"engine {args.name}: {action} done")
    return 0


_USAGE_COLUMNS = ("cores", "cpu_s", "rss", "gpu", "kv")


def _usage_cells(engine: dict[str, Any]) -> list[str]:
    """An engine's usage for ``offload engines list``: CPU cores in use, CPU seconds, resident memory,
    GPUs (device:utilisation/memory) and KV-cache usage; ``-`` where unknown."""

    def size(n: float) -> str:
        return f"{n / 2**30:.1f}G" if n >= 2**30 else f"{n / 2**20:.0f}M"

    def cell(value: Any, fmt: Callable[[Any], str]) -> str:
        return "-" if value is None else fmt(value)

    gpus = ",".join(
        f"{g['device']}:{cell(g['utilization'], '{:.0%}'.format)}/{size(g['memory_bytes'])}"
        for g in engine.get("gpus") or ()
    )
    return [
        cell(engine.get("cpu_cores"), "{:.2f}".format),
        cell(engine.get("cpu_seconds"), "{:.1f}".format),
        cell(engine.get("memory_bytes"), size),
        gpus or "-",
        cell(engine.get("kv_cache_usage"), "{:.0%}".format),
    ]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``offload`` console script."""
    from gateway import console

    args_in = sys.argv[1:] if argv is None else argv
    if args_in and args_in[0] in console.COMMANDS:
        # models, chat, status: clients of a running gateway, with their own options
        return console.main(args_in)
    if args_in[:1] == ["package"]:
        # A build step, not a server: its own options (`offload package --help`).
        from engines import packaging

        return packaging.main(args_in[1:], Settings().models_dir)
    parser = argparse.ArgumentParser(prog="offload", description=__doc__)
    parser.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=["run", "serve", "prepare", "engines", "keys", "package", *console.COMMANDS],
        help="models, chat MODEL, status: against a running gateway (`offload models --help`)",
    )
    parser.add_argument(
        "action",
        nargs="?",
        default="list",
        choices=["list", "start", "stop", "restart", "logs", "new"],
        help="with `engines`: list, start, stop, restart, logs; with `keys`: new",
    )
    parser.add_argument("name", nargs="?", help="with `engines`: the engine; with `keys new`: the key's name")
    parser.add_argument("--models", help="with `keys new`: the models the key may use (comma-separated)")
    parser.add_argument("--admin", action="store_true", help="with `keys new`: an admin key")
    parser.add_argument("--expires", help="with `keys new`: refused from this time (ISO 8601)")
    parser.add_argument(
        "--rpm", type=int, help="with `keys new`: requests per window (limits.window_seconds)"
    )
    parser.add_argument("--tpm", type=int, help="with `keys new`: tokens per window")
    parser.add_argument("--max-concurrent", type=int, help="with `keys new`: requests in flight at once")
    parser.add_argument("--weight", type=float, help="with `keys new`: fair-share weight (default 1)")
    parser.add_argument("--url", help="with `engines`: the gateway (default http://HOST:PORT)")
    parser.add_argument("--lines", type=int, default=50, help="with `engines logs`")
    parser.add_argument("--config", type=Path, help="configuration file (default: $OFFLOAD_CONFIG)")
    parser.add_argument("--host", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default 8000)")
    parser.add_argument(
        "--workers", help="with `serve`: gateway processes on the port, a number or auto (default 1)"
    )
    args = parser.parse_args(argv)

    settings = Settings()
    if args.config is not None:
        settings.config = args.config
    if args.host is not None:
        settings.server.host = args.host
    if args.port is not None:
        settings.server.port = args.port
    if args.workers is not None:
        try:
            settings.server.workers = ServerSettings.model_validate({"workers": args.workers}).workers
        except ValidationError:
            print(f"offload: --workers {args.workers}: a number from 1 to 256, or auto", file=sys.stderr)
            return 2
    configure_logging(settings.log)
    if args.command == "engines":
        return engines_cli(args, settings)
    if args.command == "keys":
        return keys_cli(args)
    if args.command in ("run", "serve"):
        hold_hangups()  # before the configuration is read: a reload asked from now on is not lost
    try:
        config = load_config(settings.config)
    except ConfigError as exc:
        print(f"offload: {exc}", file=sys.stderr)
        return 2

    if args.command == "run" and settings.server.worker_count() > 1:
        print(f"offload: {_RUN_WORKERS}", file=sys.stderr)
        return 2
    if args.command in ("run", "serve"):
        problem = exposure_problem(settings, config)
        if problem is not None:
            print(f"offload: {problem}", file=sys.stderr)
            return 2
    if args.command == "serve":
        serve(settings, config)
        return 0
    if args.command == "prepare":
        from engines.supervisor import EngineStartError, Supervisor
        from gateway.local_engines import engine_specs

        try:
            specs = engine_specs(config, settings.models_dir)
            Supervisor(specs, settings.models_dir, settings.logs_dir).prepare_models()
        except EngineStartError as exc:
            print(f"offload: {exc}", file=sys.stderr)
            return 1
        return 0
    return run(settings, config)


if __name__ == "__main__":
    sys.exit(main())
