"""Loss curves from the metrics log: router distillation loss and accuracy, expert LM loss."""

import json
from pathlib import Path


def plot_metrics(metrics_path: Path, out_png: Path) -> Path:
    """Write a PNG with one panel per stage (router: loss + accuracy vs oracle; expert: LM loss).

    A bare ``Figure`` (no pyplot): the caller's matplotlib backend, e.g. a notebook's inline one, is left alone.
    """
    from matplotlib.figure import Figure

    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    fig = Figure(figsize=(11, 3.8))
    axes = fig.subplots(1, 2)
    router = [r for r in rows if r["stage"] == "router"]
    expert = [r for r in rows if r["stage"] == "expert"]
    def by_round(rows_):  # one line per round: stages of different rounds are not contiguous in steps
        for rnd in sorted({r["round"] for r in rows_}):
            yield [r for r in rows_ if r["round"] == rnd]

    ax = axes[0]
    twin = ax.twinx()
    for seg in by_round(router):
        x = [r["global_step"] for r in seg]
        ax.plot(x, [r["loss"] for r in seg], ".-", color="tab:blue", ms=3)
        twin.plot(x, [r["router_acc"] for r in seg], ".-", color="tab:orange", ms=3)
    ax.set_xlabel("global step")
    ax.set_ylabel("distillation loss", color="tab:blue")
    ax.set_title("router stages")
    twin.set_ylabel("top-1 agreement with oracle", color="tab:orange")
    twin.set_ylim(0, 1)
    ax = axes[1]
    for seg in by_round(expert):
        x, y = [r["global_step"] for r in seg], [r["loss"] for r in seg]
        ax.plot(x, y, ".", color="tab:green", ms=3, alpha=0.5)
        w = min(5, len(y))  # batches mix domains, so single-batch losses are noisy: show a running mean
        ax.plot(x[w - 1:], [sum(y[i - w + 1:i + 1]) / w for i in range(w - 1, len(y))], "-", color="tab:green")
    ax.set_xlabel("global step")
    ax.set_ylabel("LM loss (nats/token)")
    ax.set_title("expert stages")
    for r in rows:  # round boundaries
        if r["step"] == 1 and r["stage"] == "router" and r["round"] > 0:
            for a in axes:
                a.axvline(r["global_step"] - 0.5, color="grey", lw=0.5, ls="--")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(out_png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out_png)
    return out_png
