"""``docs/RELIABILITY.md``, written from what the reliability commands measured, never typed by hand.

    python -m benchmarks.reliability

Reads ``benchmarks/results/reliability/``: ``faults.json`` (the fault matrix, written by the
``tests/faults`` run of ``make test``), ``fuzz.json`` (``make fuzz``), ``soak.json`` (``make soak``)
and ``soak-short.json`` (the 2-minute soak of ``make test``). A missing file leaves its section
saying so. ``make soak`` and ``make fuzz`` run this at their end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import readme

SOURCE = readme.RESULTS / "reliability"
DOC = Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md"


def _load(name: str, source: Path) -> dict[str, Any] | None:
    path = source / f"{name}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _faults(data: dict[str, Any] | None) -> list[str]:
    lines = ["## Faults survived (`tests/faults`, run by `make test`)", ""]
    if data is None:
        return [*lines, "Not run yet: `make test` (or `pytest tests/faults`) writes it.", ""]
    cells = data.get("cells", [])
    passed = sum(1 for c in cells if c.get("passed"))
    lines += [
        f"{passed} of {len(cells)} cells passed ({data.get('generated', '?')}).",
        "",
        "| group | cell | outcome | abort / recovery p99 | passed |",
        "| --- | --- | --- | ---: | --- |",
    ]
    for c in cells:
        p99 = c.get("abort_p99_s")
        if p99 is None:
            p99 = c.get("recover_s")  # (time to recover, or the longest silence in the stream)
        timing = "" if p99 is None else f"{p99 * 1000:.0f} ms"
        lines.append(
            f"| {c.get('group', '')} | {c.get('cell', '')} | {c.get('outcome', '')} | {timing} |"
            f" {'yes' if c.get('passed') else 'NO'} |"
        )
    return [*lines, ""]


def _fuzz(data: dict[str, Any] | None) -> list[str]:
    lines = ["## Inputs tried (`make fuzz`: schemathesis against `/schema`)", ""]
    if data is None:
        return [*lines, "Not run yet: `make fuzz` writes it.", ""]
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(data.get("by_status", {}).items()))
    lines += [
        f"{data.get('cases', 0)} requests over {len(data.get('operations', []))} operations"
        f" ({data.get('examples_per_operation', '?')} examples each, {data.get('seconds', 0):.0f} s).",
        "",
        f"- Answers by status: {statuses or 'none'}.",
        f"- 5xx answers: {data.get('server_errors', '?')}; 4xx bodies not in OpenAI's error shape:"
        f" {data.get('bad_error_shapes', '?')}; bodies with a traceback or an internal address:"
        f" {data.get('leaks', '?')}.",
        "",
    ]
    return lines


def _soak(data: dict[str, Any] | None, title: str, how: str) -> list[str]:
    lines = [f"## {title}", ""]
    if data is None:
        return [*lines, f"Not run yet: {how} writes it.", ""]
    rss, fds = data.get("rss_mb", {}), data.get("fds", {})
    errors = data.get("errors") or {}
    lines += [
        f"{data.get('streams', '?')} concurrent streams for {data.get('minutes', '?')} min, then"
        f" {data.get('requests', '?')} non-streaming requests ({data.get('generated', '?')}):"
        f" {'passed' if data.get('passed') else 'FAILED'}.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| errors not injected | {sum(errors.values()) if isinstance(errors, dict) else errors} |",
        f"| clients that left on purpose | {data.get('injected_disconnects', '?')} |",
        f"| gateway RSS start / after warm-up / end | {rss.get('start', '?')} / {rss.get('after_warmup', '?')}"
        f" / {rss.get('end', '?')} MB |",
        f"| RSS slope after warm-up | {data.get('rss_slope_mb_per_min', '?')} MB/min |",
        f"| open descriptors baseline / peak / after | {fds.get('baseline', '?')} / {fds.get('peak', '?')}"
        f" / {fds.get('after', '?')} |",
        *_fd_kinds(fds),
        f"| requests in flight after | {data.get('in_flight_after', '?')} |",
        f"| engine requests still running after | {data.get('engine_running_after', '?')} |",
        "",
    ]
    return lines


def _fd_kinds(fds: dict[str, Any]) -> list[str]:
    """The descriptors by kind, when the soak sorted them: idle pooled connections to the engines are
    kept by the gateway's connection pool (and its health probes), not leaked."""
    before, after = fds.get("baseline_by_kind"), fds.get("after_by_kind")
    if not (before and after):
        return []
    kinds = ", ".join(f"{k} {before.get(k, 0)} -> {v}" for k, v in after.items() if k != "total")
    return [f"| descriptors by kind, baseline -> after | {kinds} (pooled idle engine connections are kept) |"]


def render(source: Path = SOURCE) -> str:
    """The page, from the result files in ``source``."""
    lines = [
        "# Reliability",
        "",
        "Written by `python -m benchmarks.reliability` from the figures the commands below measured; do not",
        "edit by hand. What Offload promises: an engine's crash never touches the gateway, no request is lost",
        "before its first byte (and a stream broken after it is resumed on another replica when one exists),",
        "a client who leaves stops the engine's work, and bad input gets a clear error, never a 5xx.",
        "",
    ]
    lines += _soak(_load("soak", source), "Load held (`make soak`)", "`make soak`")
    lines += _soak(_load("soak-short", source), "Load held, short (`make test`)", "`make test`")
    lines += _faults(_load("faults", source))
    lines += _fuzz(_load("fuzz", source))
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(render())
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
