"""A PNG of a load run: latency histogram and throughput over time (needs matplotlib)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.stats import LoadResult


def plot(result: LoadResult, path: Path) -> bool:
    """Write the figure to ``path``; False (and nothing written) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    latencies = [r.latency * 1000 for r in result.ok if r.latency is not None]
    ttfts = [r.ttft * 1000 for r in result.ok if r.ttft is not None]
    timeline = result.timeline(bucket=max(0.25, result.elapsed / 60) if result.elapsed else 1.0)
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    top = max(latencies + ttfts, default=1.0)
    bins = [top * i / 50 for i in range(51)]
    left.hist(latencies, bins=bins, alpha=0.7, label="end-to-end")
    if ttfts:
        left.hist(ttfts, bins=bins, alpha=0.7, label="TTFT")
    left.set_xlabel("ms")
    left.set_ylabel("requests")
    left.set_title("Latency")
    left.legend()
    right.plot(timeline["t"], timeline["tokens_per_s"], label="tokens/s", color="tab:blue")
    right.set_xlabel("seconds since start")
    right.set_ylabel("tokens/s", color="tab:blue")
    twin = right.twinx()
    twin.plot(timeline["t"], timeline["requests_per_s"], label="requests/s", color="tab:orange")
    twin.set_ylabel("requests/s", color="tab:orange")
    right.set_title("Throughput over time")
    config = result.config
    figure.suptitle(
        f"{config.get('kind')} {'stream' if config.get('stream') else 'non-stream'} "
        f"- {config.get('model')} - {len(result.ok)}/{len(result.records)} ok"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True
