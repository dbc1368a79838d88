"""PNG plots of the serving benchmarks. matplotlib is imported inside each function (Agg backend), so
importing this module costs nothing and needs no display."""

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_cache(result: dict, path) -> Path:
    """Hit ratio against capacity, one line per policy (the bench-cache result)."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    capacities = [row["capacity"] for row in result["rows"]]
    columns = list(result["rows"][0]["policies"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for column in columns:
        ratios = [100 * row["policies"][column]["hit_ratio"] for row in result["rows"]]
        ax.plot(capacities, ratios, marker="o", label=column, linestyle="--" if column == "belady-offline" else "-")
    ax.set_xlabel(f"cache capacity ({result['unit']}s)")
    ax.set_ylabel("hit ratio (%)")
    ax.set_xticks(capacities)
    ax.set_title(f"Expert cache on a replayed stream ({result['batching_policy']} batching)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_sched(result: dict, path) -> Path:
    """Normalized-latency p95 and distinct experts per batch for each batching policy (bench-sched)."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    policies = list(dict.fromkeys(run["policy"] for run in result["runs"]))
    rates = list(dict.fromkeys(run["rate_per_s"] for run in result["runs"]))
    positions = list(range(len(rates)))
    labels = ["trace" if r is None else f"{r:g}" for r in rates]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
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
    plt.close(fig)
    return path
