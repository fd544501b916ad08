from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import ServerSettings, Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("OFFLOAD_"):
            monkeypatch.delenv(name)


def test_defaults_listen_on_loopback_with_sane_limits() -> None:
    settings = Settings()

    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8000
    assert settings.server.max_body_bytes == 8 * 1024 * 1024
    assert settings.config is None
    assert settings.health.retry_after_seconds >= 1


def test_environment_overrides_nested_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_UPSTREAM__REQUEST_TIMEOUT", "30")
    monkeypatch.setenv("OFFLOAD_SERVER__PORT", "9123")
    monkeypatch.setenv("OFFLOAD_LOG__FORMAT", "json")
    monkeypatch.setenv("OFFLOAD_HEALTH__FAILURE_THRESHOLD", "5")

    settings = Settings()

    assert settings.upstream.request_timeout == 30.0
    assert settings.server.port == 9123
    assert settings.log.format == "json"
    assert settings.health.failure_threshold == 5
    # Untouched fields of an overridden group keep their defaults.
    assert settings.upstream.connect_timeout == 5.0


def test_config_path_comes_from_offload_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OFFLOAD_CONFIG", str(tmp_path / "offload.yaml"))

    assert Settings().config == tmp_path / "offload.yaml"


def test_unrelated_environment_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_SOMETHING_ELSE", "x")
    monkeypatch.setenv("PORT", "1")

    assert Settings().server.port == 8000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OFFLOAD_SERVER__PORT", "0"),
        ("OFFLOAD_SERVER__MAX_BODY_BYTES", "100"),
        ("OFFLOAD_UPSTREAM__REQUEST_TIMEOUT", "0"),
        ("OFFLOAD_HEALTH__RETRY_AFTER_SECONDS", "0"),
        ("OFFLOAD_LOG__LEVEL", "loud"),
    ],
)
def test_out_of_range_environment_values_are_rejected(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)

    with pytest.raises(ValidationError):
        Settings()


def test_models_and_logs_live_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)

    assert settings.models_dir == tmp_path / "models"
    assert settings.logs_dir == tmp_path / "logs"


def test_groups_can_be_passed_explicitly() -> None:
    settings = Settings(server=ServerSettings(port=9999))

    assert settings.server.port == 9999
