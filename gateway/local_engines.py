"""The local engines of a configuration, as the engines package's :class:`~engines.spec.EngineSpec`.

The configuration belongs to the gateway; the supervisor (``engines``, the lower layer) only ever
sees specs. Engine names: ``smollm2`` (one engine), ``chat:v1`` (a version), ``chat:v1#1`` (its
second replica); replicas of an unversioned model are ``name#0``, ``name#1``.
"""

from __future__ import annotations

from pathlib import Path

from engines.models import PREPARERS
from engines.spec import EngineSpec
from gateway.config import OffloadConfig


def engine_specs(config: OffloadConfig, models_dir: Path) -> list[EngineSpec]:
    """One spec per local engine of ``config``, in configuration order.

    A packaged model (``smollm2``, ``minilm``) is served from ``models_dir / name`` once prepared;
    any other ``model`` is a model directory (``~`` expanded).
    """
    specs: list[EngineSpec] = []
    for model in config.models:
        versions = model.version_configs()
        locals_ = model.local_engines()
        for version, index, local in locals_:
            if local.model in PREPARERS:
                model_dir = models_dir / local.model
            else:
                model_dir = Path(local.model).expanduser()
            name = f"{model.name}:{version}" if version else model.name
            if index or sum(1 for v, _, _ in locals_ if v == version) > 1:
                name += f"#{index}"
            served = model.served_name(versions[version].engines[index])
            specs.append(EngineSpec(name, model.task, model_dir, served, local.launch()))
    return specs
