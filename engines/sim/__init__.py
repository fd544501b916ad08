"""An engine SIMULATOR for tests and benchmarks: a small vLLM-shaped OpenAI server that replays
fixed tokens with configurable latency and faults. It is never the product and loads no model.

``create_sim_app(SimConfig(...))`` builds the app in-process; ``python -m engines.sim`` serves it.
"""

from __future__ import annotations

from engines.sim.app import create_sim_app
from engines.sim.config import Knobs, SimConfig

__all__ = ["Knobs", "SimConfig", "create_sim_app"]
