"""deploy/compose.yaml's ``observability`` profile is wired to deploy/observability: every mounted file
exists, Prometheus finds its rules where the config names them, and Grafana's provisioning points at
that Prometheus and at the folder the generated dashboard is mounted in."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.integration.servers import ROOT

COMPOSE = ROOT / "deploy" / "compose.yaml"
OBSERVABILITY = ROOT / "deploy" / "observability"


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())["services"]
    return {n: s for n, s in raw.items() if "observability" in s.get("profiles", ())}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to the compose file) of the service's bind mounts."""
    pairs = (str(v).split(":")[:2] for v in service.get("volumes", ()))
    return {dst: src for src, dst in pairs if src.startswith(".")}


def test_the_profile_holds_prometheus_and_grafana_and_their_files_exist(services: dict[str, Any]) -> None:
    assert set(services) == {"prometheus", "grafana"}
    for name, service in services.items():
        for source in mounts(service).values():
            assert (COMPOSE.parent / source).exists(), (name, source)


def test_prometheus_finds_its_rules_next_to_its_config(services: dict[str, Any]) -> None:
    bound = mounts(services["prometheus"])
    (flag,) = [a for a in services["prometheus"]["command"] if a.startswith("--config.file=")]
    config_path = PurePosixPath(flag.split("=", 1)[1])
    config = yaml.safe_load((COMPOSE.parent / bound[str(config_path)]).read_text())

    for rules in config["rule_files"]:
        assert str(config_path.parent / rules) in bound, rules


def test_grafana_reads_that_prometheus_and_the_generated_dashboard(services: dict[str, Any]) -> None:
    bound = mounts(services["grafana"])
    provisioning = COMPOSE.parent / bound["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "offload.yml").read_text())["providers"]
    url = urlsplit(source["url"])
    published = {p.split(":")[-1] for p in services["prometheus"]["ports"]}

    assert url.hostname == "prometheus" and str(url.port) in published
    dashboards = COMPOSE.parent / bound[provider["options"]["path"]]
    assert (dashboards / "offload.json").is_file()
    home = PurePosixPath(services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert str(home.parent) == provider["options"]["path"] and (dashboards / home.name).is_file()
