"""The configuration reloaded 20 times under steady load (weights changed, a replica added and removed):
not one request fails."""

from __future__ import annotations

import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import yaml

from engines.sim import Knobs, SimConfig
from tests.faults.conftest import Cell
from tests.faults.harness import serve_sim
from tests.integration.servers import GatewayProcess, wait_until

GROUP = "reload"
RELOADS = 20


def config(urls: list[str], step: int) -> dict[str, Any]:
    """Two versions whose weights swing with ``step``; v2 gains and loses a second replica."""
    v2 = [{"url": urls[1], "served_name": "sim"}]
    if step % 2:
        v2.append({"url": urls[2], "served_name": "sim"})
    weight = (step % 5) + 1
    return {
        "models": [
            {
                "name": "chat",
                "task": "chat",
                "versions": {
                    "v1": {"weight": weight, "engines": [{"url": urls[0], "served_name": "sim"}]},
                    "v2": {"weight": 6 - weight, "engines": v2},
                },
            }
        ]
    }


def test_twenty_reloads_under_load_fail_no_request(cell: Cell, tmp_path: Path) -> None:
    sim = SimConfig(model="sim", knobs=Knobs(output_tokens=8, itl=0.002))
    with ExitStack() as stack:
        urls = [stack.enter_context(serve_sim(sim)).base_url for _ in range(3)]
        gw = GatewayProcess(tmp_path, [], {"OFFLOAD_RELOAD__WATCH_INTERVAL": "0.1"})
        gw.config_path.write_text(yaml.safe_dump(config(urls, 0)))
        gw.start()
        outcomes: Counter[str] = Counter()
        stop = threading.Event()

        def load(stream: bool) -> None:
            body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
            with httpx.Client(base_url=gw.base_url, timeout=30) as client:
                while not stop.is_set():
                    try:
                        answer = client.post("/v1/chat/completions", json=body)
                        ok = answer.status_code == 200 and (
                            not stream or answer.text.endswith("data: [DONE]\n\n")
                        )
                        ok = ok and '"error"' not in answer.text
                        outcomes["ok" if ok else f"status {answer.status_code}"] += 1
                    except httpx.HTTPError as exc:
                        outcomes[type(exc).__name__] += 1

        workers = [threading.Thread(target=load, args=(i % 2 == 0,)) for i in range(4)]
        try:
            for w in workers:
                w.start()
            wait_until(lambda: sum(outcomes.values()) >= 20, 30, what="load under way")
            started = time.monotonic()
            for step in range(1, RELOADS + 1):
                before = gw.log().count("configuration reloaded")
                served = sum(outcomes.values())
                gw.config_path.write_text(yaml.safe_dump(config(urls, step)))
                wait_until(
                    lambda b=before: gw.log().count("configuration reloaded") > b, 10, what=f"reload {step}"
                )
                # some traffic on each configuration before the next one
                wait_until(
                    lambda s=served: sum(outcomes.values()) >= s + 8, 30, what="traffic after a reload"
                )
            took = time.monotonic() - started
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=30)
            gw.stop()

    failed = {k: v for k, v in outcomes.items() if k != "ok"}
    lost = sum(failed.values())
    cell.saw(f"{RELOADS} reloads in {took:.1f} s under load: {outcomes['ok']} requests served, {lost} failed")
    assert not failed, failed
    assert outcomes["ok"] >= RELOADS * 8
