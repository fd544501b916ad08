"""deploy/observability against a real Prometheus: the committed scrape config and alert rules pass
promtool and load, and after a gateway in front of the engine simulator has served a bounded load
(chat streams on two versions, embeddings, a queued model, an unknown model, a key over its rpm),
every query of the generated dashboard returns data and every alert expression evaluates.

Prometheus scrapes every second here (15 s in the committed file); the dashboard's
``$__rate_interval`` becomes ``1m`` and its variables ``.*`` (Grafana's "All").
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import openai
import pytest
import yaml

from engines.sim import Knobs, SimConfig
from gateway.keys import hash_key
from tests.integration.servers import ROOT, GatewayProcess, wait_until
from tests.observability.prometheus_server import PrometheusServer, binary
from tests.sim.conftest import RunningSim, serve_sim

OBSERVABILITY = ROOT / "deploy" / "observability"
CONFIG, RULES = OBSERVABILITY / "prometheus.yml", OBSERVABILITY / "alerts.yml"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "offload.json"
OPS, TIGHT = "ofl-ops-test-key", "ofl-tight-test-key"
TIGHT_RPM = 3

# Panels that cannot have data on this machine, and why. Everything else must.
EXEMPT = {
    "Engine CPU": "process usage exists only for engines the gateway supervises; here they are URL engines",
    "Engine memory": "process usage exists only for engines the gateway supervises; here they are URL engines",
    "GPU utilisation": "no GPU on the test machine (NVML absent)",
    "GPU memory": "no GPU on the test machine (NVML absent)",
}


def load_generator() -> ModuleType:
    """deploy/observability/dashboard.py, imported from its path (deploy/ is no package)."""
    spec = importlib.util.spec_from_file_location("offload_dashboard", OBSERVABILITY / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def panel_queries() -> dict[str, list[str]]:
    """Each panel's PromQL, with Grafana's variables replaced by what works with a 1 s scrape."""
    panels = [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]
    return {
        p["title"]: [
            t["expr"].replace("$__rate_interval", "1m").replace("$model", ".*").replace("$version", ".*")
            for t in p["targets"]
        ]
        for p in panels
    }


def alert_rules() -> dict[str, str]:
    """Each alert's name and expression, from the committed rules file."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r["expr"] for g in groups for r in g["rules"]}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], capture_output=True, text=True, timeout=60, check=False
    )


def loopback_config(workdir: Path, gateway: str, engine: str) -> Path:
    """The committed config with its targets on loopback, a 1 s scrape and the rules by absolute path."""
    config = yaml.safe_load(CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    targets = {"offload-gateway": gateway, "vllm-engines": engine}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(targets)
    for name, target in targets.items():
        job = jobs[name]
        for discovery in ("dns_sd_configs", "static_configs", "relabel_configs"):
            job.pop(discovery, None)
        job["static_configs"] = [{"targets": [target]}]
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Observed:
    """A gateway that has served the load, and the Prometheus that scraped it."""

    prometheus: PrometheusServer
    gateway: GatewayProcess
    statuses: dict[str, list[int]]


def gateway_models(sim: RunningSim) -> list[dict[str, Any]]:
    engine = {"url": sim.base_url, "served_name": "sim"}
    return [
        {
            "name": "chat",
            "task": "chat",
            "versions": {
                "v1": {"weight": 50, "engines": [engine]},
                "v2": {"weight": 50, "engines": [engine]},
            },
        },
        {"name": "emb", "task": "embeddings", "engine": engine},
        # One request at a time, one more may wait: a burst waits in and is refused by the fair queue.
        {"name": "queued", "task": "chat", "max_in_flight": 1, "engine": engine},
    ]


def load(gw: GatewayProcess, statuses: dict[str, list[int]]) -> None:
    """One round of traffic: streams on both versions, embeddings, a queued burst and failures."""
    ops = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=OPS, max_retries=0, timeout=30)
    tight = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=TIGHT, max_retries=0, timeout=30)
    chat = {"messages": [{"role": "user", "content": "hi"}], "stream": True}

    def stream(model: str, client: openai.OpenAI = ops) -> int:
        try:
            for _ in client.chat.completions.create(model=model, **chat):  # type: ignore[call-overload]
                pass
        except openai.APIStatusError as exc:
            return exc.status_code
        return 200

    def embed() -> int:
        return 200 if ops.embeddings.create(model="emb", input=["hello", "world"]).data else 0

    with ThreadPoolExecutor(8) as pool:
        statuses["chat"] += pool.map(lambda _: stream("chat:v1" if _ % 2 else "chat:v2"), range(16))
        statuses["emb"] += pool.map(lambda _: embed(), range(8))
        statuses["queued"] += pool.map(lambda _: stream("queued"), range(6))
    statuses["unknown"].append(stream("no-such-model"))
    statuses["tight"] += [stream("chat", tight) for _ in range(TIGHT_RPM + 1)]


def scraped_after(prometheus: PrometheusServer, moment: float) -> Callable[[], bool]:
    """Whether Prometheus has scraped the gateway and the engine since ``moment``."""
    return lambda: all(prometheus.scraped_after(job, moment) for job in ("offload-gateway", "vllm-engines"))


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    tmp = tmp_path_factory.mktemp("observability")
    sim_config = SimConfig(model="sim", embedding_dims=32, knobs=Knobs(ttft=0.02, itl=0.01, output_tokens=12))
    with serve_sim(sim_config) as sim:
        models = gateway_models(sim)
        gw = GatewayProcess(tmp, models)
        keys = [
            {"name": "ops", "hash": hash_key(OPS)},
            {"name": "tight", "hash": hash_key(TIGHT), "rpm": TIGHT_RPM},
        ]
        admission = {"queue_size": 1, "queue_timeout": 5}
        gw.config_path.write_text(
            yaml.safe_dump({"models": models, "auth": {"keys": keys}, "admission": admission})
        )
        gw.start()
        prometheus = PrometheusServer(tmp, loopback_config(tmp, f"127.0.0.1:{gw.port}", sim.base_url[7:]))
        try:
            prometheus.start()
            statuses: dict[str, list[int]] = {k: [] for k in ("chat", "emb", "queued", "unknown", "tight")}
            # Two rounds with a scrape between and after: rates need a series seen before it grew.
            for _ in range(2):
                load(gw, statuses)
                wait_until(scraped_after(prometheus, time.time()), 30, what="a scrape after the load")
            yield Observed(prometheus, gw, statuses)
        finally:
            prometheus.stop()
            gw.stop()


def test_the_committed_dashboard_is_what_its_generator_makes() -> None:
    assert DASHBOARD.read_text() == load_generator().render(), (
        "deploy/observability/grafana/dashboards/offload.json is stale: run python deploy/observability/dashboard.py"
    )


def test_promtool_accepts_the_committed_config_and_rules() -> None:
    config, rules = promtool("check", "config", str(CONFIG)), promtool("check", "rules", str(RULES))

    assert config.returncode == 0, config.stdout + config.stderr
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    # The check above must be able to fail.
    broken = tmp_path / "alerts.yml"
    broken.write_text(RULES.read_text().replace("offload_replica_up == 0", "offload_replica_up ==", 1))

    assert promtool("check", "rules", str(broken)).returncode != 0


def test_the_load_got_the_answers_it_was_built_for(observed: Observed) -> None:
    s = observed.statuses
    assert set(s["chat"]) == {200} and set(s["emb"]) == {200}
    assert 200 in s["queued"] and {429, 503} & set(s["queued"]), s["queued"]
    assert s["unknown"] == [404, 404]
    assert s["tight"].count(429) >= 2, s["tight"]


def test_every_dashboard_panel_has_data_after_the_load(observed: Observed) -> None:
    queries = panel_queries()
    assert set(EXEMPT) <= set(queries), "an exemption names a panel the dashboard no longer has"

    def has_data(exprs: list[str]) -> bool:
        return all(
            any(math.isfinite(float(sample["value"][1])) for sample in observed.prometheus.query(e))
            for e in exprs
        )

    checked = {title: exprs for title, exprs in queries.items() if title not in EXEMPT}
    # Engine gauges land on the gateway's next engine scrape: poll, bounded.
    try:
        wait_until(lambda: all(has_data(e) for e in checked.values()), 20, interval=0.5, what="data")
    except AssertionError:
        empty = {
            title: [e for e in exprs if not has_data([e])]
            for title, exprs in checked.items()
            if not has_data(exprs)
        }
        raise AssertionError(f"panels without data: {json.dumps(empty, indent=1)}") from None


def test_exempt_panels_query_without_error(observed: Observed) -> None:
    for title in EXEMPT:
        for expr in panel_queries()[title]:
            observed.prometheus.query(expr)  # a bad query fails the test (status "error")


def test_the_alert_rules_load_and_evaluate(observed: Observed) -> None:
    expected = alert_rules()

    def loaded() -> dict[str, str]:
        groups = observed.prometheus.api("rules", type="alert")["groups"]
        return {r["name"]: r["health"] for g in groups for r in g["rules"]}

    wait_until(lambda: set(loaded()) == set(expected) and set(loaded().values()) == {"ok"}, 20, what="rules")
    for expr in expected.values():
        observed.prometheus.query(expr)


def test_the_key_over_its_limit_shows_in_the_near_limit_alert(observed: Observed) -> None:
    result = observed.prometheus.query(alert_rules()["OffloadKeyNearLimit"])

    assert {(r["metric"]["key"], r["metric"]["kind"]) for r in result} == {("tight", "requests")}
    assert {float(r["value"][1]) for r in result} == {0.0}


def test_the_gateway_serves_the_limit_gauge_it_alerts_on(observed: Observed) -> None:
    text = httpx.get(observed.gateway.base_url + "/metrics", timeout=5).text

    assert 'offload_key_limit_remaining_ratio{key="tight",kind="requests"} 0.0' in text
    assert 'offload_key_limit_remaining_ratio{key="ops"' not in text  # no limit: no gauge
