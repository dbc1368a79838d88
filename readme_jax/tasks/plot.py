"""One picture of a downstream report: each task's accuracy per model kind, with its 95% interval."""

from pathlib import Path

from readme_jax.atomic import atomic_path


def plot_downstream(report: dict, out_png) -> Path:
    """Grouped bars (tasks along x, one bar per kind) of ``acc_norm`` where the task reports it, else ``acc``,
    with 1.96-standard-error whiskers. A bare ``Figure`` (no pyplot), written atomically."""
    from matplotlib.figure import Figure

    kinds, tasks = report["kinds"], list(report["tasks"])
    fig = Figure(figsize=(max(6.0, 1.6 * len(tasks) + 2), 3.8))
    ax = fig.subplots()
    width = 0.8 / max(1, len(kinds))
    for j, kind in enumerate(kinds):
        values, errors = [], []
        for task in tasks:
            row = report["tasks"][task][kind]
            m = row.get("acc_norm", row["acc"])
            values.append(100 * m["value"])
            errors.append(100 * m["ci95"])
        x = [i - 0.4 + width * (j + 0.5) for i in range(len(tasks))]
        ax.bar(x, values, width, yerr=errors, capsize=2, label=kind)
    labels = [f"{t}\n({'acc_norm' if 'acc_norm' in report['tasks'][t][kinds[0]] else 'acc'}, "
              f"n={report['tasks'][t]['documents']})" for t in tasks]
    ax.set_xticks(range(len(tasks)), labels, fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper center", fontsize=8, ncol=len(kinds), frameon=False)
    ax.set_title("downstream accuracy, 95% intervals")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return out_png
