"""``readme-jax report``: one page (``report.md`` and ``report.html``) from a work folder's JSON outputs.

Nothing is recomputed and no number is typed in: every table comes from the files the pipeline commands
wrote (``train/summary.json``, ``train_pruned/summary.json``, ``eval/eval.json``, ``eval/downstream.json``,
``analysis/analysis.json``, and ``serving/engine.json`` when ``bench-engine --save`` wrote it there) and every
figure is a PNG they saved. A missing output is named in the report, with the command that makes it, instead
of failing the whole page. (A plot path saved relative to another working folder is left out.)
"""

import html
import json
import os
from pathlib import Path

from readme_jax import atomic
from readme_jax.errors import ReadmeJaxError


class Page:
    """Blocks of a report, rendered to Markdown and to HTML."""

    def __init__(self, title: str):
        self.title, self.blocks = title, []

    def heading(self, text):
        self.blocks.append(("h", text))

    def text(self, text):
        self.blocks.append(("p", text))

    def table(self, head, rows):
        self.blocks.append(("t", (list(head), [list(r) for r in rows])))

    def image(self, path: Path, root: Path, alt: str):
        self.blocks.append(("i", (os.path.relpath(path, root), alt)))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "h":
                out += [f"## {value}", ""]
            elif kind == "p":
                out += [value, ""]
            elif kind == "t":
                head, rows = value
                out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows] + [""]
            else:
                out += [f"![{value[1]}]({value[0]})", ""]
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape
        out = ["<!doctype html><html><head><meta charset='utf-8'>", f"<title>{e(self.title)}</title>",
               "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
               "td,th{border:1px solid #bbb;padding:.2em .6em;text-align:right}img{max-width:100%}</style>",
               f"</head><body><h1>{e(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "h":
                out.append(f"<h2>{e(value)}</h2>")
            elif kind == "p":
                out.append(f"<p>{e(value)}</p>")
            elif kind == "t":
                head, rows = value
                out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows]
                out.append("</table>")
            else:
                out.append(f"<p><img src='{e(value[0])}' alt='{e(value[1])}'></p>")
        return "\n".join(out + ["</body></html>"])


def _load(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReadmeJaxError(f"{path}: not a readable JSON output ({exc})") from None


def _missing(page, what, command):
    page.text(f"No {what} in this work folder: `{command}` writes it.")


def _training(page, workdir):
    page.heading("Training")
    summary = _load(workdir / "train" / "summary.json")
    if summary is None:
        return _missing(page, "training summary", f"readme-jax train --workdir {workdir}")
    rows = []
    for name, s in (("MoE (router + experts)", summary), ("pruned baseline",
                                                         _load(workdir / "train_pruned" / "summary.json"))):
        if s is None:
            continue
        cfg = s.get("config", {})
        router_steps = 0 if s.get("baseline") or name == "pruned baseline" else cfg.get("router_steps")
        rows.append([name, s.get("global_steps"), f"{cfg.get('rounds')} x ({router_steps} + "
                     f"{cfg.get('expert_steps')})", cfg.get("expert_loss", "lm"),
                     _f(s.get("router_loss_first")), _f(s.get("router_loss_last")), _f(s.get("expert_loss_first")),
                     _f(s.get("expert_loss_last")), _pct(s.get("router_acc_last"))])
    page.table(["run", "steps", "rounds x (router + expert)", "expert loss", "router loss first", "last",
                "expert loss first", "last", "router acc (last batches)"], rows)
    for run in ("train", "train_pruned"):
        if (workdir / run / "loss.png").is_file():
            page.image(workdir / run / "loss.png", workdir, f"{run} loss curves")


def _eval(page, workdir):
    page.heading("Held-out perplexity")
    report = _load(workdir / "eval" / "eval.json")
    if report is None:
        return _missing(page, "perplexity evaluation", f"readme-jax eval --workdir {workdir}")
    ppl, domains = report["perplexity"], report["domains"]
    kinds = list(ppl)
    rows = [[d] + [_f(ppl[k][d], 2) for k in kinds] for d in domains]
    rows.append(["mean"] + [_f(sum(ppl[k].values()) / len(domains), 2) for k in kinds])
    page.table(["domain"] + kinds, rows)
    act = report.get("active_params", {})
    page.text(f"Active parameters per token: dense {act.get('dense', 0) / 1e6:.1f} M, MoE and pruned "
              f"{act.get('moe', 0) / 1e6:.1f} M.")
    if "agreement_with_dense" in report:
        page.heading("Agreement with the dense model")
        agree, kl = report["agreement_with_dense"], report["kl_to_dense"]
        kinds = list(agree)
        rows = [[d] + [f"{100 * agree[k][d]:.1f}% ({kl[k][d]:.3f})" for k in kinds] for d in domains]
        rows.append(["mean"] + [f"{100 * sum(agree[k].values()) / len(domains):.1f}% "
                                f"({sum(kl[k].values()) / len(domains):.3f})" for k in kinds])
        page.text("Top-1 next-token agreement with the dense model on held-out text (mean KL(dense || model) "
                  "in nats per token).")
        page.table(["domain"] + kinds, rows)
    if "chat" in report:
        from readme_jax.chat_eval import CHAT_COLUMNS, chat_rows, chat_summary

        page.heading("Agreement with the dense model on chat prompts")
        page.text(chat_summary(report["chat"]))
        page.table(CHAT_COLUMNS, chat_rows(report["chat"]))
    if "router" in report:
        r = report["router"]
        page.heading("Router")
        page.text(f"The trained router's top-1 agrees with the oracle on {100 * r['accuracy_vs_oracle']:.1f}% "
                  f"of held-out tokens; its choices keep the previous token's expert "
                  f"{100 * r['temporal_locality']:.1f}% of the time (oracle: "
                  f"{100 * r['oracle_temporal_locality']:.1f}%).")
        page.table(["domain", "agreement with the oracle"],
                   [[d, _pct(v)] for d, v in r["accuracy_vs_oracle_per_domain"].items()])


def _downstream(page, workdir):
    page.heading("Downstream tasks")
    report = _load(workdir / "eval" / "downstream.json")
    if report is None:
        return _missing(page, "downstream evaluation", f"readme-jax eval --workdir {workdir} --tasks arc_easy,...")
    kinds, rows = report["kinds"], []
    for task, row in report["tasks"].items():
        for metric in ("acc", "acc_norm", "perplexity"):
            if metric not in row[kinds[0]]:
                continue
            cells = [f"{row[k][metric]:.2f}" if metric == "perplexity" else
                     f"{100 * row[k][metric]['value']:.1f} ± {100 * row[k][metric]['ci95']:.1f}" for k in kinds]
            rows.append([task, row["documents"], metric] + cells)
    if "mean_zero_shot_acc" in report:
        means = report["mean_zero_shot_acc"]
        rows.append([f"mean of {len(report['zero_shot_tasks'])} 0-shot", "", "acc"]
                    + [f"{100 * means[k]:.1f}" for k in kinds])
    page.table(["task", "documents", "metric"] + kinds, rows)
    page.text("Accuracy in %, with the 95% interval (1.96 standard errors).")
    if (workdir / "eval" / "downstream.png").is_file():
        page.image(workdir / "eval" / "downstream.png", workdir, "downstream accuracy")


def _analysis(page, workdir):
    page.heading("Routing analysis")
    result = _load(workdir / "analysis" / "analysis.json")
    if result is None:
        return _missing(page, "routing analysis", f"readme-jax analyze --workdir {workdir}")
    mi = result["mutual_information_bits"]
    page.text(f"{result['tokens']:,} held-out tokens, {result['layers']} layers, {result['experts']} experts. "
              f"Mutual information between adjacent layers' oracle choices: {mi[0]:.2f} bits (first pair) to "
              f"{mi[-1]:.2f} bits (last pair), mean {sum(mi) / len(mi):.2f}. Temporal locality: "
              f"{100 * result['temporal_same_as_previous']:.1f}% of tokens keep the previous token's oracle expert.")
    for png in sorted((workdir / "analysis").glob("*.png")):
        page.image(png, workdir, png.stem)


def _serving(page, workdir):
    page.heading("Serving")
    path = workdir / "serving" / "engine.json"
    result = _load(path)
    if result is None:
        return _missing(page, "serving benchmark", f"readme-jax bench-engine --model {workdir}/moe_trained "
                        f"--save {path}")
    try:
        rows = [[row["slots"], row["batching"], row["cache"], row.get("prefetch", "-"),
                 f"{100 * row['stats']['hit_ratio']:.1f}", row["stats"]["loads"],
                 f"{row['stats']['bytes_moved'] / 1e9:.1f}", f"{row['summary']['unique_experts_per_batch']:.2f}",
                 f"{1e3 * row['summary']['normalized_latency_s']['p50']:.0f}",
                 f"{1e3 * row['summary']['normalized_latency_s']['p95']:.0f}",
                 f"{row['summary']['throughput_tokens_per_s']:.1f}"] for row in result["rows"]]
        setting = (f"{result['model']}: {result['requests']} requests x {result['max_new_tokens']} new tokens, "
                   + (f"{result['concurrency']} closed-loop clients" if result.get("concurrency") else "open loop")
                   + f"; {result['device']}, jax {result['jax']}.")
    except (KeyError, TypeError) as exc:
        raise ReadmeJaxError(f"{path}: not a bench-engine result (missing {exc})") from None
    page.text(f"The real engine with C device expert slots (`readme-jax bench-engine`), {setting}")
    page.table(["C", "batching", "cache", "prefetch", "hit %", "loads", "GB moved", "experts / batch",
                "norm. p50 ms", "norm. p95 ms", "tok/s"], rows)
    if result.get("plot") and Path(result["plot"]).is_file():
        page.image(Path(result["plot"]), workdir, "engine runs")


def _f(x, digits=4):
    return "-" if x is None else f"{x:.{digits}f}"


def _pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def write_report(workdir) -> tuple[Path, Path]:
    """Write ``<workdir>/report.md`` and ``report.html``; returns their paths."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise ReadmeJaxError(f"{workdir}: no such work folder")
    page = Page(f"readme-jax report: {workdir}")
    for section in (_training, _eval, _downstream, _analysis, _serving):
        section(page, workdir)
    md, page_html = workdir / "report.md", workdir / "report.html"
    atomic.write_text(md, page.markdown())
    atomic.write_text(page_html, page.html())
    return md, page_html
