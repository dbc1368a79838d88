"""``readme-jax train``: router distillation and alternating expert tuning of a refactored MoE."""


def register(sub):
    from train.config import PRESETS

    p = sub.add_parser("train", help="alternating router/expert tuning of <workdir>/moe -> <workdir>/moe_trained")
    p.add_argument("--workdir", default="out/readme", help="work folder shared by the pipeline commands")
    p.add_argument("--moe", default=None, help="the MoE folder to train (default: <workdir>/moe)")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field (repeatable), e.g. --set rounds=4 --set distill=reference")
    p.add_argument("--fresh", action="store_true", help="discard <workdir>/train (checkpoints, metrics) first")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this many global steps (checkpointed)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from train import sharding
    from train.config import make_config
    from train.run import train

    cfg = make_config(args.preset, args.overrides)  # bad presets / keys fail before anything loads
    sharding.maybe_initialize_distributed()
    summary = train(cfg, args.workdir, args.moe, fresh=args.fresh, stop_after=args.stop_after,
                    progress=not args.json)
    if args.json:
        print(json.dumps(summary, default=str))
        return 0
    if "stopped_at" in summary:
        print(f"stopped after global step {summary['stopped_at']} (checkpointed); run again to resume")
        return 0
    tps = summary["tokens_per_s"]
    print(f"train-step throughput: router stage {_fmt(tps['router'])} tokens/s, "
          f"expert stage {_fmt(tps['expert'])} tokens/s")
    if "router_acc_last" in summary:
        print(f"router top-1 agreement with the oracle (last training batches): {summary['router_acc_last']:.1%}")
    for stage in ("router", "expert"):
        if f"{stage}_loss_first" in summary:
            print(f"{stage} loss: {summary[f'{stage}_loss_first']:.4f} -> {summary[f'{stage}_loss_last']:.4f}")
    print(f"wrote {summary.get('exported', '(no export)')}, {summary['plot']}")
    return 0


def _fmt(x):
    return "n/a" if x is None else f"{x:,.0f}"
