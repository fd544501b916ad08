"""The local engines of a configuration, as the engines package's :class:`~engines.spec.EngineSpec`.

The configuration belongs to the gateway; the supervisor (``engines``, the lower layer) only ever
sees specs. Engine names: ``smollm2`` (one engine), ``chat:v1`` (a version), ``chat:v1#1`` (its
second replica); replicas of an unversioned model are ``name#0``, ``name#1``.

A rollout (:mod:`gateway.rollout`) may run an engine on another port than the file gives (its
replacement starts while the old one still holds that port): ``ports`` maps engine names to the
ports they really use, and :func:`with_ports` routes the configuration to them.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

from engines.hostinfo import port_free
from engines.models import PREPARERS
from engines.spec import EngineSpec
from gateway.config import EngineConfig, LocalEngine, ModelConfig, OffloadConfig

__all__ = ["EngineSpec", "engine_specs", "free_port", "port_free", "with_ports"]


def _named(model: ModelConfig) -> Iterator[tuple[str, str, int, LocalEngine]]:
    """(engine name, version, replica index, local engine) for each local engine of ``model``."""
    locals_ = model.local_engines()
    for version, index, local in locals_:
        name = f"{model.name}:{version}" if version else model.name
        if index or sum(1 for v, _, _ in locals_ if v == version) > 1:
            name += f"#{index}"
        yield name, version, index, local


def engine_specs(
    config: OffloadConfig, models_dir: Path, ports: Mapping[str, int] | None = None
) -> list[EngineSpec]:
    """One spec per local engine of ``config``, in configuration order.

    A packaged model (``smollm2``, ``minilm``) is served from ``models_dir / name`` once prepared;
    any other ``model`` is a model directory (``~`` expanded). ``ports``: engines that run on
    another port than the file gives.
    """
    specs: list[EngineSpec] = []
    ports = ports or {}
    for model in config.models:
        versions = model.version_configs()
        for name, version, index, local in _named(model):
            if local.model in PREPARERS:
                model_dir = models_dir / local.model
            else:
                model_dir = Path(local.model).expanduser()
            served = model.served_name(versions[version].engines[index])
            launch = local.launch()
            if name in ports:
                launch = replace(launch, port=ports[name])
            specs.append(EngineSpec(name, model.task, model_dir, served, launch))
    return specs


def with_ports(config: OffloadConfig, ports: Mapping[str, int]) -> OffloadConfig:
    """``config`` with the local engines named in ``ports`` on those ports (the routes follow)."""
    if not ports:
        return config
    models = []
    for model in config.models:
        moved: dict[str, dict[int, int]] = {}  # version -> replica index -> port
        for name, version, index, _ in _named(model):
            if name in ports:
                moved.setdefault(version, {})[index] = ports[name]
        if not moved:
            models.append(model)
        elif model.versions is not None:
            versions = {
                v: vc.model_copy(update={"engines": _moved(vc.engines, moved.get(v, {}))})
                for v, vc in model.versions.items()
            }
            models.append(model.model_copy(update={"versions": versions}))
        elif model.engines is not None:
            models.append(model.model_copy(update={"engines": _moved(model.engines, moved[""])}))
        elif model.engine is not None:
            models.append(model.model_copy(update={"engine": _moved((model.engine,), moved[""])[0]}))
    return config.model_copy(update={"models": tuple(models)})


def _moved(engines: tuple[EngineConfig, ...], ports: Mapping[int, int]) -> tuple[EngineConfig, ...]:
    """``engines`` with those at the indexes in ``ports`` on those ports."""
    return tuple(
        e.model_copy(update={"local": e.local.model_copy(update={"port": ports[i]})})
        if e.local is not None and i in ports
        else e
        for i, e in enumerate(engines)
    )


def free_port(host: str) -> int:
    """A TCP port on ``host`` nobody listens on right now (for an engine's replacement)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
