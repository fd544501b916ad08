"""``offload package``: a model version as an immutable engine image, its weights inside.

The engine image (``engines/vllm``) downloads weights when a pod starts; a packaged image carries them,
so a tag such as ``offload/model-chat:v1`` always serves the same bytes, starts without a download and
needs no access to a model hub. This module writes the image's build context, ready for
``docker build``:

* ``Dockerfile``: ``FROM`` the engine image (build argument ``ENGINE_IMAGE``), the weights copied to
  :data:`WEIGHTS_PATH`, OCI labels (version, title, source, model, weights digest) and the
  ``OFFLOAD_ENGINE_*`` variables the engine's entrypoint turns into ``vllm serve`` flags;
* ``model/``: the weights, hard-linked from the prepared model where the file system allows (no copy
  of gigabytes), copied otherwise;
* :data:`MANIFEST`: the tag, the digest and what was packaged, as JSON for the release pipeline.

The model is one of the packaged models (``smollm2``, ``minilm``; prepared first, as ``offload run``
does) or a model directory (e.g. one ``hf download`` wrote).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from engines.models import MARKER, PREPARERS, is_prepared

ENGINE_IMAGE = "offload/vllm-engine:v0.32.0"
"""Default base: the engine image `engines/vllm/Dockerfile` builds (override with ``--engine-image`` or
``docker build --build-arg ENGINE_IMAGE=...``)."""
WEIGHTS_PATH = "/opt/offload/model"
MANIFEST = "offload-package.json"
TASKS = ("chat", "embeddings")
PACKAGED_TASKS = {"smollm2": "chat", "minilm": "embeddings"}
"""The task each packaged model serves."""
_CHUNK = 1 << 20
# Docker's grammar for a tag and a repository path (lowercase components, optional registry host).
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_REPOSITORY = re.compile(r"([a-z0-9.-]+(:[0-9]+)?/)?[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*")


class PackagingError(RuntimeError):
    """The model cannot be found or the build context cannot be written."""


@dataclass(frozen=True)
class Package:
    """What ``offload package`` wrote: the image's tag and the weights' digest."""

    tag: str
    name: str
    version: str
    task: str
    served_name: str
    weights_digest: str
    weights_source: str
    engine_image: str
    files: int
    bytes: int


def weights_files(directory: Path) -> list[Path]:
    """The files of a model directory (symlinks followed, the preparation marker left out), sorted."""
    found = [
        path
        for path in directory.rglob("*")
        if path.is_file() and path.name != MARKER and ".cache" not in path.relative_to(directory).parts
    ]
    return sorted(found, key=lambda p: p.relative_to(directory).as_posix())


def weights_digest(directory: Path) -> str:
    """``sha256:<hex>`` over every file's relative path and content: equal digests, equal weights."""
    outer = hashlib.sha256()
    for path in weights_files(directory):
        inner = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                inner.update(chunk)
        outer.update(f"{path.relative_to(directory).as_posix()}\0{inner.hexdigest()}\n".encode())
    return "sha256:" + outer.hexdigest()


def resolve_model(model: str, models_dir: Path) -> Path:
    """The directory holding ``model``'s weights: a packaged model (prepared if needed) or a directory."""
    if model in PREPARERS:
        target = models_dir / model
        if not is_prepared(target):
            # In a subprocess, as the supervisor does: the conversion imports torch and transformers.
            cmd = [sys.executable, "-m", "engines.models", "prepare", model, "--models-dir", str(models_dir)]
            if subprocess.run(cmd, check=False).returncode != 0:
                raise PackagingError(f"preparing the packaged model {model!r} failed (see above)")
        return target
    path = Path(model)
    if not (path / "config.json").is_file():
        known = ", ".join(sorted(PREPARERS))
        raise PackagingError(
            f"{model!r} is neither a packaged model ({known}) nor a model directory with a config.json"
        )
    return path


def _link_or_copy(source: str, target: str) -> object:
    # A hard link shares the bytes (the context is read, never written); across file systems, copy.
    # Symlinks are resolved first: `docker build` sends a link, not what it points to. An image keeps
    # its files' modes and its engine runs as a user of its own: a file others cannot read (transformers
    # saves weights 0600) is copied and made readable, leaving the prepared model's own mode alone.
    real = os.path.realpath(source)
    if os.stat(real).st_mode & stat.S_IROTH:
        try:
            os.link(real, target)
            return target
        except OSError:
            pass
    shutil.copy2(real, target)
    os.chmod(target, os.stat(target).st_mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    return target


def _label(value: str) -> str:
    return json.dumps(value)  # a double-quoted Dockerfile string, with quotes and backslashes escaped


def dockerfile(package: Package, source: str | None) -> str:
    """The packaged image's Dockerfile."""
    labels = {
        "org.opencontainers.image.title": package.tag.rsplit(":", 1)[0],
        "org.opencontainers.image.version": package.version,
        "org.opencontainers.image.description": (
            f"Offload engine for {package.name} {package.version} ({package.task}), weights inside"
        ),
        **({"org.opencontainers.image.source": source} if source else {}),
        "dev.offload.model": package.name,
        "dev.offload.task": package.task,
        "dev.offload.weights.digest": package.weights_digest,
        "dev.offload.weights.source": package.weights_source,
    }
    env = {
        "OFFLOAD_ENGINE_MODEL": WEIGHTS_PATH,
        "OFFLOAD_ENGINE_SERVED_NAME": package.served_name,
        "OFFLOAD_ENGINE_TASK": package.task,
        # The weights are in the image: never reach for a model hub.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    label_lines = " \\\n      ".join(f"{key}={_label(value)}" for key, value in labels.items())
    env_lines = " \\\n    ".join(f"{key}={value}" for key, value in env.items())
    return (
        "# syntax=docker/dockerfile:1\n"
        f"# Generated by `offload package`: {package.tag}, the engine image with the weights of\n"
        f"# {package.weights_source} inside (digest {package.weights_digest}).\n"
        f"#   docker build -t {package.tag} .\n"
        f"ARG ENGINE_IMAGE={package.engine_image}\n"
        "FROM ${ENGINE_IMAGE}\n"
        "\n"
        f"LABEL {label_lines}\n"
        "\n"
        f"COPY model/ {WEIGHTS_PATH}/\n"
        "\n"
        f"ENV {env_lines}\n"
    )


def package(
    model: str,
    version: str,
    out: Path,
    models_dir: Path,
    *,
    name: str | None = None,
    task: str | None = None,
    image: str | None = None,
    engine_image: str = ENGINE_IMAGE,
    source: str | None = None,
) -> Package:
    """Write the build context of ``model``'s engine image for ``version`` into ``out`` (new or empty)."""
    if out.exists() and any(out.iterdir()):
        raise PackagingError(f"{out} is not empty: packages are immutable, write a new one elsewhere")
    if not _TAG.fullmatch(version):
        raise PackagingError(f"version {version!r} is not a valid image tag")
    weights = resolve_model(model, models_dir)
    name = name or (model if model in PREPARERS else weights.resolve().name)
    task = task or PACKAGED_TASKS.get(model, "chat")
    if task not in TASKS:
        raise PackagingError(f"task {task!r}: expected one of {', '.join(TASKS)}")
    repository = image or f"offload/model-{name}"
    if not _REPOSITORY.fullmatch(repository):
        raise PackagingError(f"{repository!r} is not a valid image repository (lowercase, a/b/c)")
    files = weights_files(weights)
    result = Package(
        tag=f"{repository}:{version}",
        name=name,
        version=version,
        task=task,
        served_name=f"{name}-{version}",
        weights_digest=weights_digest(weights),
        weights_source=model,
        engine_image=engine_image,
        files=len(files),
        bytes=sum(f.stat().st_size for f in files),
    )
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        weights,
        out / "model",
        copy_function=_link_or_copy,
        ignore=shutil.ignore_patterns(MARKER, ".cache"),
    )
    (out / "Dockerfile").write_text(dockerfile(result, source))
    (out / MANIFEST).write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def argument_parser() -> argparse.ArgumentParser:
    """The options of ``offload package``."""
    parser = argparse.ArgumentParser(
        prog="offload package",
        description="Write the build context of an engine image with MODEL's weights inside.",
    )
    parser.add_argument("model", help=f"a packaged model ({', '.join(sorted(PREPARERS))}) or a directory")
    parser.add_argument("--version", required=True, help="the model version: the image tag (e.g. v1)")
    parser.add_argument("--name", help="the model's name in Offload (default: MODEL)")
    parser.add_argument("--task", choices=TASKS, help="default: the packaged model's, else chat")
    parser.add_argument("--image", help="the image repository (default offload/model-NAME)")
    parser.add_argument("--engine-image", default=ENGINE_IMAGE, help=f"base image (default {ENGINE_IMAGE})")
    parser.add_argument("--source", help="URL of the source repository (OCI source label)")
    parser.add_argument("--out", type=Path, help="the build context (default build/package/NAME-VERSION)")
    return parser


def main(argv: list[str], models_dir: Path) -> int:
    """CLI: ``offload package MODEL --version V [--out DIR] ...``; prints the manifest."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    out = args.out or Path("build", "package", f"{args.name or Path(args.model).name}-{args.version}")
    try:
        result = package(
            args.model,
            args.version,
            out,
            models_dir,
            name=args.name,
            task=args.task,
            image=args.image,
            engine_image=args.engine_image,
            source=args.source,
        )
    except PackagingError as exc:
        print(f"offload package: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({**asdict(result), "context": str(out)}, indent=2))
    return 0
