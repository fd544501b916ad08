"""The ``offload`` command: ``run`` (engines + gateway), ``serve`` (gateway only), ``prepare`` (models)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvicorn
from litestar import Litestar

from gateway.config import ConfigError, OffloadConfig, load_config
from gateway.logging import configure_logging
from gateway.settings import Settings


def app_from_env() -> Litestar:
    """Factory for ``uvicorn --factory gateway.main:app_from_env`` (settings from the environment)."""
    settings = Settings()
    configure_logging(settings.log)
    return create_app_checked(settings, load_config(settings.config))


def create_app_checked(settings: Settings, config: OffloadConfig) -> Litestar:
    """The app, imported late so ``offload prepare`` stays light."""
    from gateway.app import create_app

    return create_app(settings, config)


def serve(settings: Settings, config: OffloadConfig) -> None:
    """Serve the gateway until SIGINT/SIGTERM (uvloop + httptools, one worker)."""
    app = create_app_checked(settings, config)
    uvicorn.run(
        app,
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop",
        http="httptools",
        access_log=False,  # the gateway writes its own summary line per request
        log_level="warning",
        timeout_graceful_shutdown=10,
    )


def run(settings: Settings, config: OffloadConfig) -> int:
    """Prepare models, start the configured local engines, serve, then stop the engines."""
    from engines.supervisor import EngineStartError, Supervisor

    supervisor = Supervisor(config, settings.models_dir, settings.logs_dir)
    try:
        supervisor.prepare_models()
        supervisor.start_all()
        supervisor.wait_all()
    except EngineStartError as exc:
        print(f"offload: {exc}", file=sys.stderr)
        supervisor.stop_all()
        return 1
    except KeyboardInterrupt:
        print("\noffload: interrupted; stopping engines", file=sys.stderr)
        supervisor.stop_all()
        return 130
    try:
        print(
            f"offload: gateway on http://{settings.server.host}:{settings.server.port}/v1 "
            "(Ctrl-C stops it and its engines)",
            flush=True,
        )
        serve(settings, config)
    finally:
        supervisor.stop_all()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``offload`` console script."""
    parser = argparse.ArgumentParser(prog="offload", description=__doc__)
    parser.add_argument("command", nargs="?", default="run", choices=["run", "serve", "prepare"])
    parser.add_argument("--config", type=Path, help="configuration file (default: $OFFLOAD_CONFIG)")
    parser.add_argument("--host", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default 8000)")
    args = parser.parse_args(argv)

    settings = Settings()
    if args.config is not None:
        settings.config = args.config
    if args.host is not None:
        settings.server.host = args.host
    if args.port is not None:
        settings.server.port = args.port
    configure_logging(settings.log)
    try:
        config = load_config(settings.config)
    except ConfigError as exc:
        print(f"offload: {exc}", file=sys.stderr)
        return 2

    if args.command == "serve":
        serve(settings, config)
        return 0
    if args.command == "prepare":
        from engines.supervisor import EngineStartError, Supervisor

        try:
            Supervisor(config, settings.models_dir, settings.logs_dir).prepare_models()
        except EngineStartError as exc:
            print(f"offload: {exc}", file=sys.stderr)
            return 1
        return 0
    return run(settings, config)


if __name__ == "__main__":
    sys.exit(main())
