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
    p.add_argument("--baseline", default=None, choices=["pruned"],
                   help="tune the pruned-dense baseline instead, with the expert stages' exact budget "
                        "(<workdir>/pruned_tuned; `readme-jax eval` reports it as pruned_tuned)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run)

    from train.plan import DEFAULT_MESHES, PAPER_EXPERTS

    q = sub.add_parser("plan", help="compile a preset's training steps for N (fake) devices and print the "
                                    "per-device memory of each mesh shape, with and without remat")
    q.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    q.add_argument("--model", default="llama-2-7b",
                   help="backbone shapes: llama-2-7b (built in) or an HF folder (only its config.json is read)")
    q.add_argument("--experts", type=int, default=PAPER_EXPERTS, help="experts per layer (half the neurons each)")
    q.add_argument("--mesh", nargs="+", default=list(DEFAULT_MESHES), help="mesh shapes to compile for")
    q.add_argument("--remat", nargs="+", default=["off", "on"], choices=["off", "on"])
    q.add_argument("--devices", type=int, default=8, help="devices to compile for (fake CPU devices)")
    q.add_argument("--device-gb", type=float, default=80.0, help="memory of one device, GB (1e9 bytes)")
    q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    q.add_argument("--json", action="store_true", help="one JSON object per configuration")
    q.set_defaults(func=run_plan)


def run(args) -> int:
    import json

    from train import sharding
    from train.config import make_config
    from train.run import train

    cfg = make_config(args.preset, args.overrides)  # bad presets / keys fail before anything loads
    sharding.maybe_initialize_distributed()
    sharding.print_topology()
    summary = train(cfg, args.workdir, args.moe, fresh=args.fresh, stop_after=args.stop_after,
                    progress=not args.json, baseline=args.baseline)
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


def run_plan(args) -> int:
    import dataclasses
    import json
    from pathlib import Path

    from readme_jax.config import load_hf_config
    from readme_jax.errors import ReadmeJaxError
    from train import plan
    from train.config import make_config

    devices = plan.plan_devices(args.devices)  # first: fake CPU devices exist only if asked for before JAX starts
    cfg = make_config(args.preset, args.overrides)
    if args.model == "llama-2-7b":
        dense = plan.LLAMA2_7B
    elif (Path(args.model) / "config.json").is_file():
        dense = load_hf_config(Path(args.model) / "config.json")
    else:
        raise ReadmeJaxError(f"--model {args.model!r}: neither llama-2-7b nor a folder with a config.json")
    limit = args.device_gb * plan.GB
    if not args.json:
        print(f"{args.preset} preset, {dense.name} shapes ({dense.n_layers} layers, d_model {dense.d_model}), "
              f"{args.experts} experts, micro-batch {cfg.micro_batch} x {cfg.seq_len} tokens, "
              f"{cfg.compute_dtype} compute, {len(devices)} devices; GB per device:")
        print(plan.HEADER)
    fits = []
    for remat in args.remat:
        for mesh in args.mesh:
            row = plan.plan_row(cfg.replace(remat=remat == "on"), dense, args.experts, mesh, devices)
            if row.peak <= limit:
                fits.append(row)
            if args.json:
                print(json.dumps({**dataclasses.asdict(row), "router_peak": row.router_peak,
                                  "expert_peak": row.expert_peak, "fits": row.peak <= limit}), flush=True)
            else:
                print(plan.format_row(row, limit), flush=True)
    if not args.json:
        if fits:
            best = min(fits, key=lambda r: r.peak)
            print(f"fits {args.device_gb:g} GB per device: {len(fits)} of {len(args.mesh) * len(args.remat)}; "
                  f"lowest peak {best.peak / plan.GB:.1f} GB with mesh={best.mesh} remat={best.remat}")
        else:
            print(f"no configuration fits {args.device_gb:g} GB per device (see docs/training.md)")
    return 0
