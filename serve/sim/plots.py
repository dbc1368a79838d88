"""PNG plots of the serving benchmarks. matplotlib is imported inside each function, so importing this module
costs nothing and needs no display. The PNG writers draw on bare ``Figure``s (no pyplot), so they never switch
the caller's backend (a notebook's inline one); ``draw_cache`` draws on any axes, e.g. one of a notebook figure."""

from pathlib import Path


def _figure(figsize):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def draw_cache(ax, result: dict) -> None:
    """Hit ratio (%) against capacity on ``ax``, one line per policy, from a ``run_cache_bench`` result."""
    capacities = [row["capacity"] for row in result["rows"]]
    for column in result["rows"][0]["policies"]:
        ratios = [100 * row["policies"][column]["hit_ratio"] for row in result["rows"]]
        ax.plot(capacities, ratios, marker="o", label=column, linestyle="--" if column == "belady-offline" else "-")
    ax.set_xlabel(f"cache capacity ({result['unit']}s)")
    ax.set_ylabel("hit ratio (%)")
    ax.set_xticks(capacities)
    ax.set_title(f"Expert cache on a replayed stream ({result['batching_policy']} batching)")
    ax.grid(alpha=0.3)
    ax.legend()


def plot_cache(result: dict, path) -> Path:
    """``draw_cache`` as a PNG file (the bench-cache plot)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = _figure((6, 4))
    draw_cache(fig.subplots(), result)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_sched(result: dict, path) -> Path:
    """Normalized-latency p95 and distinct experts per batch for each batching policy (bench-sched)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    policies = list(dict.fromkeys(run["policy"] for run in result["runs"]))
    rates = list(dict.fromkeys(run["rate_per_s"] for run in result["runs"]))
    positions = list(range(len(rates)))
    labels = ["trace" if r is None else f"{r:g}" for r in rates]
    fig = _figure((10, 4))
    left, right = fig.subplots(1, 2)
    for policy in policies:
        runs = {run["rate_per_s"]: run for run in result["runs"] if run["policy"] == policy}
        p95 = [1e3 * runs[r]["normalized_latency_s"]["p95"] for r in rates]
        experts = [runs[r]["unique_experts_per_batch"] for r in rates]
        left.plot(positions, p95, marker="o", label=policy)
        right.plot(positions, experts, marker="o", label=policy)
    for ax, ylabel in ((left, "p95 normalized latency (ms/token)"), (right, "distinct experts per batch")):
        ax.set_xticks(positions, labels)
        ax.set_xlabel("arrival rate (requests/s)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    left.legend()
    fig.suptitle("Batching policies on the simulated server")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
