"""Read-ME pipeline commands: ``profile`` -> ``refactor`` -> ``eval`` -> ``analyze``.

They share a work folder (``--workdir``, default ``out/readme``): ``stats/`` (activation statistics),
``moe/`` (the MoE checkpoint folder), ``eval/`` (eval.json, routes.npz), ``analysis/`` (JSON + PNGs).
"""

import json
from pathlib import Path

from readme_jax import atomic
from readme_jax.errors import ReadmeJaxError

DEFAULT_WORKDIR = "out/readme"


def _common(p, blocks: int):
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help="work folder shared by the pipeline commands")
    p.add_argument("--block-len", type=int, default=512, help="tokens per block")
    p.add_argument("--blocks", type=int, default=blocks, help="blocks per domain")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--doc-chars", type=int, default=2048,
                   help="use at most this many characters of each document (0: whole documents)")


def register(sub):
    p = sub.add_parser("profile", help="mean |MLP activation| per neuron, layer and domain")
    p.add_argument("--model", default="default")
    p.add_argument("--domains", nargs="+", default=None, help="domain names (default: every available one)")
    _common(p, blocks=8)
    p.set_defaults(func=run_profile)

    p = sub.add_parser("refactor", help="slice the dense MLPs into domain experts; write a MoE folder")
    p.add_argument("--model", default="default")
    p.add_argument("--keep-ratio", type=float, default=0.5, help="fraction of MLP neurons per expert")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR)
    p.set_defaults(func=run_refactor)

    p = sub.add_parser("eval", help="held-out perplexity per domain (or --tasks: downstream accuracy): dense, "
                                    "pruned-dense, MoE variants")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--trained", default=None,
                   help="a trained Read-ME folder to add as moe_router (default: <workdir>/moe_trained when present; "
                        "'none' to skip)")
    _common(p, blocks=4)
    p.add_argument("--chat-prompts", type=int, default=0,
                   help="also measure agreement with the dense model on N chat-formatted prompts per domain (held-out "
                        "excerpts; the dense model's greedy answers, scored on the answer tokens); 0: skip")
    p.add_argument("--chat-tokens", type=int, default=48, help="longest dense answer of the chat agreement")
    p.add_argument("--chat-chars", type=int, default=600, help="characters of held-out excerpt per chat prompt")
    from readme_jax.commands import downstream

    downstream.add_arguments(p)
    p.set_defaults(func=run_eval)

    p = sub.add_parser("analyze", help="layer-transition MI, temporal locality, domain confusion (+ PNGs)")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_analyze)

    p = sub.add_parser("report", help="gather a work folder's tables and plots into report.md and report.html")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR)
    p.set_defaults(func=run_report)


def run_report(args) -> int:
    from readme_jax.report import write_report

    md, page = write_report(args.workdir)
    print(f"report: {md} ({page})")
    return 0


def run_profile(args) -> int:
    import readme_jax
    from readme_jax.corpus_blocks import domain_blocks, select_domains
    from readme_jax.profile import profile

    if args.blocks < 1 or args.block_len < 2:
        raise ReadmeJaxError(f"--blocks={args.blocks} and --block-len={args.block_len} must be >= 1 and >= 2")
    lm = readme_jax.load(args.model)
    domains = select_domains(args.domains)
    print(f"domains (expert order): {', '.join(domains.names)}")
    blocks = domain_blocks(lm.tokenizer, domains, "train", args.block_len, args.blocks, args.doc_chars)
    stats = profile(lm, blocks, batch_size=args.batch_size)
    out = stats.save(Path(args.workdir) / "stats")
    print(f"profiled {int(stats.tokens_D.sum())} tokens at {stats.tokens_per_s:.0f} tokens/s -> {out}")
    return 0


def run_refactor(args) -> int:
    import numpy as np

    import readme_jax
    from readme_jax.profile import ProfileStats
    from readme_jax.refactor import refactor

    if not 0 < args.keep_ratio <= 1:
        raise ReadmeJaxError(f"keep ratio {args.keep_ratio} must be in (0, 1]")
    workdir = Path(args.workdir)
    stats = ProfileStats.load(workdir / "stats")
    lm = readme_jax.load(args.model)
    source = args.model if args.model == "default" else str(Path(args.model).resolve())
    result = refactor(lm, stats, workdir / "moe", args.keep_ratio, source=source)
    report, out = result.report, result.folder
    perm = np.asarray(report["permanent_per_layer"])
    print(f"{len(stats.domains)} experts x {report['expert_width']} of {report['d_ff']} neurons per layer; "
          f"permanent part per layer: min {perm.min()}, mean {perm.mean():.0f}, max {perm.max()}")
    print("mean pairwise Jaccard overlap of domain neuron sets:")
    print("  " + " ".join(f"{d[:8]:>8}" for d in stats.domains))
    for d, row in zip(stats.domains, report["jaccard_mean"]):
        print(f"  {d[:8]:>8} " + " ".join(f"{v:8.3f}" for v in row))
    from readme_jax.router import RouterConfig, flop_ratio

    router = RouterConfig.for_backbone(lm.cfg, n_experts=len(stats.domains))
    print(f"pre-gating router for this backbone: {router.num_params():,} params (d_model={router.d_model}, "
          f"{router.n_layers} layer, {router.n_heads} heads); cost per token "
          f"{100 * flop_ratio(router, lm.cfg, 512):.2f}% of the backbone's FLOPs at 512 tokens of context")
    print(f"wrote {out}")
    return 0


def run_eval(args) -> int:
    from readme_jax.corpus_blocks import domain_blocks, select_domains
    from readme_jax.evaluate import evaluate
    from readme_jax.lm import LM
    from readme_jax.moe_io import is_moe_folder, read_moe_folder
    from readme_jax.weights import build_model

    if args.tasks is not None:  # a bad task name fails before anything loads
        from readme_jax.tasks.registry import parse_tasks

        parse_tasks(args.tasks)
    elif getattr(args, "kinds", None):
        raise ReadmeJaxError("--kinds selects model kinds of the downstream eval; give --tasks too")
    workdir = Path(args.workdir)
    folder = workdir / "moe"
    if not is_moe_folder(folder):
        raise ReadmeJaxError(f"{folder}: no Read-ME MoE folder; run `readme-jax refactor` first")
    parts = read_moe_folder(folder)
    if parts["pruned_N1F"] is None:
        raise ReadmeJaxError(f"{folder}: no pruned-dense masks (written by `readme-jax refactor`)")
    trained = _trained_folder(args, workdir, parts)
    pruned_tuned = _pruned_tuned_folder(args, workdir, parts)
    if args.tasks is not None:
        from readme_jax.commands import downstream

        return downstream.run(args, parts, trained, workdir, pruned_tuned)
    lm = LM(build_model(parts["cfg"], parts["dense_pure"]), parts["tokenizer"], source=str(folder))
    domains = select_domains(parts["domains"])
    blocks = domain_blocks(lm.tokenizer, domains, "heldout", args.block_len, args.blocks, args.doc_chars)
    report, routes = evaluate(lm, parts["masks_NEF"], parts["pruned_N1F"], blocks, batch_size=args.batch_size,
                              progress=not args.json, trained=trained, pruned_tuned=pruned_tuned)
    if trained is not None:
        report["trained_folder"] = trained.source
    if args.chat_prompts:
        from readme_jax.chat_eval import chat_agreement

        report["chat"] = chat_agreement(lm, parts["masks_NEF"], parts["pruned_N1F"], domains, args.chat_prompts,
                                        args.chat_tokens, args.chat_chars, batch_size=args.batch_size,
                                        progress=not args.json, trained=trained, pruned_tuned=pruned_tuned)
    out = workdir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "eval.json", json.dumps(report, indent=2))
    routes.save(out / "routes.npz")
    if args.json:
        print(json.dumps(report))
        return 0
    ppl = report["perplexity"]
    names = list(ppl)
    print("held-out perplexity (lower is better)")
    print(f"| {'domain':<13}| " + " | ".join(f"{n:>12}" for n in names) + " |")
    print("|" + "---|" * (len(names) + 1))
    for d in report["domains"]:
        print(f"| {d:<13}| " + " | ".join(f"{ppl[n][d]:12.2f}" for n in names) + " |")
    agree, kl = report["agreement_with_dense"], report["kl_to_dense"]
    kinds = list(agree)
    print("agreement with the dense model: top-1 next token % (mean KL(dense || model), nats)")
    print(f"| {'domain':<13}| " + " | ".join(f"{n:>16}" for n in kinds) + " |")
    print("|" + "---|" * (len(kinds) + 1))
    for d in report["domains"] + ["mean"]:
        def cell(n, d=d):
            if d == "mean":
                return sum(agree[n].values()) / len(agree[n]), sum(kl[n].values()) / len(kl[n])
            return agree[n][d], kl[n][d]

        print(f"| {d:<13}| " + " | ".join(f"{100 * a:8.1f} ({k:5.3f})" for a, k in map(cell, kinds)) + " |")
    if "chat" in report:
        print(format_chat(report["chat"]))
    if "router" in report:
        r = report["router"]
        print(f"trained router ({report['trained_folder']}): top-1 agreement with the oracle "
              f"{100 * r['accuracy_vs_oracle']:.1f}% (" + ", ".join(
                  f"{d} {100 * v:.0f}%" for d, v in r["accuracy_vs_oracle_per_domain"].items())
              + f"); temporal locality {100 * r['temporal_locality']:.1f}% (oracle "
              f"{100 * r['oracle_temporal_locality']:.1f}%)")
    act, tot = report["active_params"], report["total_params"]
    print(f"active params: dense {act['dense'] / 1e6:.1f}M, MoE/pruned {act['moe'] / 1e6:.1f}M; "
          f"MoE total {tot['moe'] / 1e6:.1f}M ({tot['moe_unique'] / 1e6:.1f}M unique)")
    print(f"wrote {out / 'eval.json'}")
    return 0


def format_chat(chat: dict) -> str:
    from readme_jax.chat_eval import CHAT_COLUMNS, chat_rows, chat_summary

    lines = [chat_summary(chat), "| " + " | ".join(CHAT_COLUMNS) + " |", "|" + "---|" * len(CHAT_COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in chat_rows(chat)])


def optional_folder(value: str | None, default: Path, missing: str) -> Path | None:
    """A MoE folder named by an option: ``value`` ('none': skip; None: ``default`` if it exists). A folder the
    user named that is not a MoE folder is an error ending in ``missing``."""
    from readme_jax.moe_io import is_moe_folder

    if value == "none":
        return None
    path = Path(value) if value else default
    if is_moe_folder(path):
        return path
    if value:
        raise ReadmeJaxError(f"{path}: {missing}")
    return None


def _pruned_tuned_folder(args, workdir: Path, parts):
    """The tuned pruned-dense baseline (``train --baseline pruned``, one expert) or None."""
    import numpy as np

    import readme_jax

    path = optional_folder(args.pruned_tuned, workdir / "pruned_tuned",
                           "no tuned pruned-dense folder (from `readme-jax train --baseline pruned`)")
    if path is None:
        return None
    lm = readme_jax.load(str(path))
    if not np.array_equal(lm.masks_NEF, parts["pruned_N1F"]):
        raise ReadmeJaxError(f"{path}: its neurons differ from {workdir / 'moe'}'s pruned-dense baseline; it was "
                             "tuned from another refactoring")
    return lm


def _trained_folder(args, workdir: Path, parts):
    """The trained MoE (an MoELM with a router) to evaluate beside the baselines, or None."""
    import numpy as np

    import readme_jax

    path = optional_folder(args.trained, workdir / "moe_trained", "no Read-ME MoE folder (from `readme-jax train`)")
    if path is None:
        return None
    trained = readme_jax.load(str(path))
    if trained.router is None:
        raise ReadmeJaxError(f"{path}: this MoE folder has no trained router")
    if trained.masks_NEF.shape != parts["masks_NEF"].shape or not np.array_equal(trained.masks_NEF,
                                                                                  parts["masks_NEF"]):
        raise ReadmeJaxError(f"{path}: its expert masks differ from {workdir / 'moe'}'s; it was trained from "
                             "another refactoring")
    return trained


def run_analyze(args) -> int:
    from readme_jax import analysis
    from readme_jax.evaluate import Routes

    workdir = Path(args.workdir)
    path = workdir / "eval" / "routes.npz"
    if not path.is_file():
        raise ReadmeJaxError(f"{path}: no routes; run `readme-jax eval` first")
    report = json.loads((workdir / "eval" / "eval.json").read_text())
    routes = Routes.load(path)
    E = int(max(routes.layer_choice_NT.max(), routes.oracle_T.max()) + 1)
    E = max(E, len(report["domains"]))
    result = analysis.analyze(routes, report["domains"], E)
    out = workdir / "analysis"
    paths = analysis.plot(result, out)
    atomic.write_text(out / "analysis.json", json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result))
        return 0
    mi = result["mutual_information_bits"]
    print(f"adjacent-layer mutual information of oracle choices (bits), {len(mi)} pairs:")
    print("  " + " ".join(f"{v:.2f}" for v in mi))
    print(f"  mean {sum(mi) / len(mi):.2f} bits = {100 * sum(result['mi_fraction_of_entropy']) / len(mi):.0f}% "
          "of the next layer's entropy")
    print(f"temporal locality: {100 * result['temporal_same_as_previous']:.1f}% of tokens keep the previous "
          "token's expert")
    if result["domain_expert_accuracy"] is not None:
        print(f"oracle expert == domain expert for {100 * result['domain_expert_accuracy']:.1f}% of tokens")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
