"""The playground (``/playground``) and the API docs (``/docs``) in headless Chromium, against the
gateway in front of real vLLM engines: the page loads offline-clean (no console error, no request
beyond the gateway), tokens stream into the page, its figures are shown, Stop aborts the engine's
request, errors are shown, embeddings work, and it all fits a 390-px-wide phone screen.

Debian's ``chromium`` and ``chromium-driver`` drive it (``make test`` installs them); Selenium is
pointed at both, so it downloads nothing. Screenshots go to the test's temporary folder; with
``OFFLOAD_SAVE_SCREENSHOT=1`` the desktop one is also copied to ``docs/playground.png`` (the README's).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from engines.sim import Knobs, SimConfig
from gateway.keys import hash_key
from tests.integration.conftest import CHAT, CHAT_V2, EMBED, Engines
from tests.integration.servers import ROOT, GatewayProcess, engine_gauge, engine_idle_after, wait_until
from tests.sim.conftest import serve_sim
from tests.unit.fakes import closed_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
RUNNING = "vllm:num_requests_running"
KEY = "ofl-playground-test-key"
LIMITED_KEY = "ofl-playground-limited-key"
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
# Records each DOM update of the newest answer's text while it streams (one entry per observer
# callback: an update the browser rendered), and the answer's state at that moment.
OBSERVE = """
window.__updates = [];
new MutationObserver(() => {
  const answers = document.querySelectorAll('[data-testid=answer]');
  const answer = answers[answers.length - 1];
  if (!answer) return;
  const text = answer.querySelector('[data-testid=answer-text]').textContent;
  const last = window.__updates[window.__updates.length - 1];
  if (!last || last.length !== text.length || last.state !== answer.dataset.state) {
    window.__updates.push({t: performance.now(), length: text.length, state: answer.dataset.state});
  }
}).observe(document.getElementById('history'), {childList: true, characterData: true, subtree: true,
                                                 attributes: true});
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium that cannot resolve any host name (only the loopback IP is reachable)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, f"{missing} missing: `make test` installs Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--window-size=1280,800",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # no other host can be reached
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this module's screenshots go (a test artifact)."""
    return tmp_path_factory.mktemp("playground-screenshots")


@pytest.fixture(scope="module")
def keyed_gateway(engines: Engines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with an API key and a versioned model (v1 and v2 on two engines, two aliases)."""
    gw = GatewayProcess(tmp_path_factory.mktemp("keyed-playground"), [])
    models = [
        {
            "name": "chat",
            "task": "chat",
            "versions": {
                "v1": {"weight": 90, "engines": [{"url": engines.url(CHAT), "served_name": CHAT}]},
                "v2": {"weight": 10, "engines": [{"url": engines.url(CHAT_V2), "served_name": CHAT_V2}]},
            },
            "aliases": {"stable": "v1", "latest": "v2"},
        },
        {"name": EMBED, "task": "embeddings", "engine": {"url": engines.url(EMBED)}},
    ]
    auth = {"keys": [{"name": "playground", "hash": hash_key(KEY)}]}
    gw.config_path.write_text(yaml.safe_dump({"models": models, "auth": auth}))
    gw.start()
    yield gw
    gw.stop()


class Page:
    """The playground in the browser: what a person does on it, and what it shows."""

    def __init__(self, driver: webdriver.Chrome, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url

    def open(self, path: str = "/", key: str | None = None) -> Page:
        self.driver.get(self.base_url + "/playground")
        self.driver.execute_script(
            "arguments[0] ? sessionStorage.setItem('offload.apiKey', arguments[0]) : sessionStorage.clear()",
            key,
        )
        self.driver.get_log("browser")  # what earlier pages logged is theirs
        self.driver.get(self.base_url + path)
        self.wait(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-models"), 15)
        return self

    def wait(self, condition: Any, timeout: float = 120) -> Any:
        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(condition)

    def by(self, testid: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, f"[data-testid={testid}]")

    def all(self, testid: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, f"[data-testid={testid}]")

    def fill(self, testid: str, text: str) -> None:
        field = self.by(testid)
        field.clear()
        field.send_keys(text)

    def options(self, testid: str) -> list[str]:
        return [o.get_attribute("value") or "" for o in Select(self.by(testid)).options]

    def ask(self, prompt: str, max_tokens: int = 48, extra: str = "", observe: bool = False) -> WebElement:
        """Send ``prompt``; the answer element (in the page from the moment the request is sent)."""
        answer = self.send(prompt, max_tokens, extra, observe)
        assert answer is not None, self.errors()
        return answer

    def send(self, prompt: str, max_tokens: int, extra: str = "", observe: bool = False) -> WebElement | None:
        """Send ``prompt``; the answer element, or None when an error took its place at once."""
        self.fill("max-tokens", str(max_tokens))
        self.fill("temperature", "0")
        if extra:
            self.driver.find_element(By.CSS_SELECTOR, "details summary").click()
            self.fill("extra", extra)
        if observe:
            self.driver.execute_script(OBSERVE)
        answers, errors = len(self.all("answer")), len(self.errors())
        self.fill("prompt", prompt)
        self.by("send").click()
        self.wait(lambda _: len(self.all("answer")) > answers or len(self.errors()) > errors, 15)
        new = self.all("answer")[answers:]
        return new[0] if new else None

    def finished(self, answer: WebElement, timeout: float = 120) -> str:
        """Wait for the answer to end; its state (done, stopped, error)."""
        return str(
            self.wait(lambda _: answer.get_attribute("data-state") in ("done", "stopped", "error"), timeout)
            and answer.get_attribute("data-state")
        )

    def error_of(self, prompt: str) -> str:
        """Send ``prompt`` expecting an error in its answer's place; the error shown."""
        errors = len(self.errors())
        self.send(prompt, 8)
        return str(self.wait(lambda _: self.errors()[errors:], 30)[-1])

    def errors(self) -> list[str]:
        return [e.text for e in self.all("error") if e.is_displayed()]

    def console_errors(self) -> list[dict[str, Any]]:
        return [e for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def foreign_requests(self) -> list[str]:
        """Every resource the page loaded that did not come from the gateway."""
        urls = self.driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href])"
        )
        return [u for u in urls if not u.startswith(self.base_url + "/")]

    def overflow(self) -> int:
        """How much wider than the viewport the page is (0: no horizontal scrolling)."""
        return int(
            self.driver.execute_script(
                "return document.scrollingElement.scrollWidth - document.documentElement.clientWidth"
            )
        )


def _figures(answer: WebElement) -> dict[str, str]:
    meta = answer.find_element(By.CSS_SELECTOR, "[data-testid=answer-meta]")
    names = ("servedModel", "replica", "ttftMs", "tokensPerSecond", "tokens")
    return {name: meta.get_attribute(f"data-{_kebab(name)}") or "" for name in names} | {"text": meta.text}


def _kebab(name: str) -> str:
    return "".join(f"-{c.lower()}" if c.isupper() else c for c in name)


def _engine_idle(engines: Engines) -> None:
    wait_until(lambda: engine_gauge(engines.url(CHAT), RUNNING) == 0, 60, what="engine idle")


def test_root_opens_the_playground_listing_the_models_with_no_console_error(
    browser: webdriver.Chrome, gateway: GatewayProcess
) -> None:
    page = Page(browser, gateway.base_url).open("/")

    assert browser.current_url == gateway.base_url + "/playground"
    assert {CHAT, EMBED} <= set(page.options("model"))
    assert {CHAT, EMBED} <= set(page.options("embed-model"))
    assert page.options("version") == [page.options("model")[0]]  # unversioned: the model itself
    assert page.console_errors() == []
    assert page.foreign_requests() == []


def test_a_prompt_streams_into_the_page_with_its_figures(
    browser: webdriver.Chrome,
    gateway: GatewayProcess,
    engines: Engines,
    shots: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _engine_idle(engines)
    page = Page(browser, gateway.base_url).open()
    Select(page.by("model")).select_by_value(CHAT)
    page.fill("system", "You are a concise assistant.")

    answer = page.ask("In two sentences, what does a KV cache do in an LLM server?", 64, observe=True)

    assert page.finished(answer) == "done", page.errors()
    updates = browser.execute_script("return window.__updates")
    streamed = [u for u in updates if u["state"] == "streaming"]
    assert len(streamed) >= 2, f"the answer did not stream: {updates}"
    assert [u["length"] for u in streamed] == sorted({u["length"] for u in streamed})
    figures = _figures(answer)
    assert figures["servedModel"] == CHAT and figures["replica"] == f"{CHAT}-0"
    ttft, rate, tokens = float(figures["ttftMs"]), float(figures["tokensPerSecond"]), int(figures["tokens"])
    assert 0 < ttft < 60_000 and rate > 0 and 2 <= tokens <= 64
    for shown in (f"replica {CHAT}-0", "TTFT", "tokens/s", f"{tokens} tokens"):
        assert shown in figures["text"]
    assert page.console_errors() == [] and page.foreign_requests() == []

    screenshot = shots / "playground-desktop.png"
    browser.save_screenshot(str(screenshot))
    if os.environ.get("OFFLOAD_SAVE_SCREENSHOT") == "1":
        shutil.copyfile(screenshot, ROOT / "docs" / "playground.png")
    (shots / "figures.json").write_text(json.dumps(figures, indent=2))
    with capsys.disabled():
        print(
            f"\nplayground measured: TTFT {ttft:.0f} ms, {rate:.1f} tokens/s, {tokens} tokens "
            f"({figures['servedModel']} on {figures['replica']}); screenshots in {shots}"
        )


def test_stop_aborts_the_engine_request_within_a_second(
    browser: webdriver.Chrome, gateway: GatewayProcess, engines: Engines, shots: Path
) -> None:
    _engine_idle(engines)
    page = Page(browser, gateway.base_url).open()
    Select(page.by("model")).select_by_value(CHAT)

    # 2000 tokens with ignore_eos: minutes of work on a CPU engine unless it is aborted.
    answer = page.ask("Tell me a long story.", 2000, extra='{"ignore_eos": true}')
    page.wait(lambda _: answer.get_attribute("data-state") == "streaming", 60)
    wait_until(lambda: engine_gauge(engines.url(CHAT), RUNNING) == 1, 10, interval=0.05, what="engine busy")
    page.by("stop").click()
    stopped = time.monotonic()
    took = engine_idle_after(engines.url(CHAT), stopped)
    assert took <= 1.0, f"the engine still ran {took:.2f} s after Stop"
    assert page.finished(answer, 5) == "stopped"
    assert "stopped" in _figures(answer)["text"]
    assert page.by("send").is_enabled() and not page.by("stop").is_enabled()
    browser.save_screenshot(str(shots / "playground-stopped.png"))


def test_an_unknown_model_is_answered_with_its_error_shown_in_the_chat(
    browser: webdriver.Chrome, gateway: GatewayProcess
) -> None:
    page = Page(browser, gateway.base_url).open("/playground?model=no-such-model")
    assert page.by("version").get_attribute("value") == "no-such-model"

    page.send("Hello?", 8)

    page.wait(lambda _: page.errors(), 15)
    assert "404" in page.errors()[-1] and "no-such-model" in page.errors()[-1]
    assert page.all("answer") == []  # the failed answer is replaced by its error


@pytest.fixture(scope="module")
def failing_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with a model whose engine (the simulator) drops each stream after a few events,
    one whose engine is down (a closed port), and a key limited to one request a minute."""
    breaking = SimConfig(model="breaks", knobs=Knobs(itl=0.02, output_tokens=100, reset_after=4))
    with serve_sim(breaking) as sim:
        gw = GatewayProcess(tmp_path_factory.mktemp("failing-playground"), [])
        models = [
            {"name": "breaks", "task": "chat", "engine": {"url": sim.base_url}},
            {"name": "down", "task": "chat", "engine": {"url": f"http://127.0.0.1:{closed_port()}"}},
        ]
        keys = [
            {"name": "playground", "hash": hash_key(KEY)},
            {"name": "limited", "hash": hash_key(LIMITED_KEY), "rpm": 1},
        ]
        gw.config_path.write_text(yaml.safe_dump({"models": models, "auth": {"keys": keys}}))
        gw.start(ready=False)
        yield gw
        gw.stop()


def test_a_broken_stream_an_engine_down_and_a_rate_limit_are_shown_as_errors(
    browser: webdriver.Chrome, failing_gateway: GatewayProcess
) -> None:
    page = Page(browser, failing_gateway.base_url).open(key=KEY)
    Select(page.by("model")).select_by_value("breaks")

    answer = page.ask("Hello?", 50)

    assert page.finished(answer, 30) == "error"
    assert answer.find_element(By.CSS_SELECTOR, "[data-testid=answer-text]").text  # what came first stays
    assert page.errors()[-1].startswith("stream error")

    Select(page.by("model")).select_by_value("down")
    assert page.error_of("Hello?").startswith("503 ") and "retry after" in page.errors()[-1]

    page.fill("api-key", LIMITED_KEY)
    page.by("prompt").click()  # the key is used from its change event on
    page.wait(lambda _: page.by("version").get_attribute("value") == "down", 15)
    assert page.error_of("Hello?").startswith("503 ")  # the key's one request this minute
    assert page.error_of("Hello?").startswith("429 ") and "retry after" in page.errors()[-1]


def test_keys_and_versions_a_missing_key_is_shown_then_the_key_lists_versions_and_pins_one(
    browser: webdriver.Chrome, keyed_gateway: GatewayProcess, shots: Path
) -> None:
    page = Page(browser, keyed_gateway.base_url).open()
    assert any("401" in e for e in page.errors()), page.errors()
    assert page.options("model") == []

    page.fill("api-key", KEY)
    page.by("prompt").click()  # the key field's change event: the models are listed again
    page.wait(lambda _: page.options("model"), 15)

    assert browser.execute_script("return sessionStorage.getItem('offload.apiKey')") == KEY
    assert page.options("model") == ["chat", EMBED]
    versions = page.options("version")
    assert versions[:3] == ["chat", "chat:v1", "chat:v2"]  # the route, then each version
    assert sorted(versions[3:]) == ["chat:latest", "chat:stable"]  # then each alias
    version_texts = [o.text for o in Select(page.by("version")).options]
    assert "chat:stable → chat:v1" in version_texts
    Select(page.by("version")).select_by_value("chat:v2")
    answer = page.ask("Say hi.", 8)
    assert page.finished(answer) == "done", page.errors()
    figures = _figures(answer)
    assert (figures["servedModel"], figures["replica"]) == ("chat:v2", "chat-v2-0")
    browser.save_screenshot(str(shots / "playground-keyed.png"))


def test_embeddings_tab_shows_the_dimension_and_a_similarity(
    browser: webdriver.Chrome, gateway: GatewayProcess
) -> None:
    page = Page(browser, gateway.base_url).open()
    page.by("tab-embeddings").click()
    Select(page.by("embed-model")).select_by_value(EMBED)
    texts = ["The cat sat on the mat.", "A cat was sitting on a rug."]
    page.fill("embed-a", texts[0])
    page.fill("embed-b", texts[1])
    page.by("embed").click()

    page.wait(lambda _: page.by("embed-dim").text, 30)
    assert page.by("embed-dim").text == "384"
    response = httpx.post(gateway.base_url + "/v1/embeddings", json={"model": EMBED, "input": texts})
    a, b = (item["embedding"] for item in response.json()["data"])
    expected = sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )
    assert float(page.by("embed-similarity").text) == pytest.approx(expected, abs=1e-4)
    assert page.by("embed-served").text == f"{EMBED} · replica {EMBED}-0"
    assert page.console_errors() == []


def test_the_page_fits_a_390_px_phone_screen(
    browser: webdriver.Chrome, gateway: GatewayProcess, engines: Engines, shots: Path
) -> None:
    _engine_idle(engines)
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    try:
        page = Page(browser, gateway.base_url).open()
        assert browser.execute_script("return document.documentElement.clientWidth") == 390
        assert browser.execute_script("return document.scrollingElement.scrollWidth") <= 390
        assert page.overflow() == 0

        answer = page.ask("Name three colours.", 24)
        assert page.finished(answer) == "done", page.errors()
        assert page.overflow() == 0
        assert answer.is_displayed() and page.by("send").is_displayed() and page.by("stop").is_displayed()
        browser.save_screenshot(str(shots / "playground-phone.png"))

        page.by("tab-embeddings").click()
        assert page.overflow() == 0 and page.by("embed").is_displayed()
        assert page.console_errors() == []
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_api_docs_render_the_schema_from_the_gateway_alone(
    browser: webdriver.Chrome, gateway: GatewayProcess, shots: Path
) -> None:
    page = Page(browser, gateway.base_url)
    browser.get(gateway.base_url + "/playground")
    browser.get_log("browser")
    browser.get(gateway.base_url + "/docs")

    chat = page.wait(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#operations-default-createChatCompletion"), 30
    )[0]
    assert "/v1/chat/completions" in chat.text
    assert page.console_errors() == []
    assert page.foreign_requests() == []
    assert gateway.base_url + "/schema" in browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    browser.save_screenshot(str(shots / "docs.png"))
