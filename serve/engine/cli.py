"""``readme-jax bench-engine``: the real engine on a workload, one row per (capacity, batching, cache)."""

import json
from pathlib import Path


def register(sub) -> None:
    b = sub.add_parser("bench-engine", help="replay a workload through the real serving engine for each policy pair",
                       description="Serve a workload (held-out domain text, or a routing trace's prompts) with the "
                                   "real engine at each capacity and (batching, cache) pair, closed loop or open "
                                   "loop; print one table of measured hit ratio, bytes moved, distinct experts per "
                                   "batch, latency percentiles, throughput, stall and host time.")
    b.add_argument("--model", required=True, help="a Read-ME MoE folder (or 'default' with --trace)")
    b.add_argument("--slots", default="2,3", help="device expert slots C, comma-separated (default 2,3)")
    b.add_argument("--pairs", default="expert-aware/belady,expert-aware/lru,decode-first/belady,decode-first/lru",
                   help="BATCHING/CACHE pairs, comma-separated; BATCHING expert-aware:W prefers resident "
                        "experts (prefer_resident=W), e.g. expert-aware:1/belady")
    b.add_argument("--prefetch", default="next", help="engine prefetch mode: next or none (default next)")
    b.add_argument("--trace", default=None, help="a JSONL routing trace whose prompts to serve (default: held-out "
                                                  "text of the model's domains)")
    b.add_argument("--requests", type=int, default=48, help="requests in the workload (default 48)")
    b.add_argument("--max-new-tokens", type=int, default=24, help="tokens generated per request (default 24)")
    b.add_argument("--concurrency", type=int, default=16,
                   help="closed-loop clients (default 16); 0 for open loop at the trace's arrival times")
    b.add_argument("--max-seqs", type=int, default=16, help="live sequences (KV rows) (default 16)")
    b.add_argument("--max-batch-tokens", type=int, default=256, help="tokens per iteration (default 256)")
    b.add_argument("--max-batch-experts", type=int, default=None,
                   help="distinct experts per batch (default: C); below C the cache policy gets a choice")
    b.add_argument("--transition-stats", default=None, metavar="STATS.json",
                   help="belady-expected: statistics its forecast starts from (readme-jax transition-stats); "
                        "default: learned online from nothing")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--calibrate", action="store_true",
                   help="fit the simulator's cost constants to the measured iterations and compare its latency")
    b.add_argument("--overhead", action="store_true",
                   help="also measure one request alone with every expert resident: decode tokens/s of the engine "
                        "against lm.generate's on-device loop")
    b.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    b.add_argument("--save", default=None, help="also write the JSON result to this path")
    b.add_argument("--plot", default=None, help="write a PNG of latency and hit ratio per run")
    b.set_defaults(func=run_bench_engine)


def run_bench_engine(args) -> int:
    import jax

    from readme_jax import atomic
    from readme_jax.errors import ReadmeJaxError
    from serve.engine import Engine
    from serve.engine import bench

    slots = [int(s) for s in args.slots.split(",") if s.strip()]
    pairs = bench.parse_pairs(args.pairs)
    for name in ("requests", "max_new_tokens", "max_seqs"):
        if getattr(args, name) < 1:
            raise ReadmeJaxError(f"--{name.replace('_', '-')} must be >= 1")
    for option in ("save", "plot"):  # the outputs' folders, made (or refused) before minutes of runs
        if getattr(args, option):
            folder = Path(getattr(args, option)).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ReadmeJaxError(f"--{option} {getattr(args, option)}: cannot create {folder} ({exc})") from None
    concurrency = args.concurrency or None
    rows, workload = [], None
    for c in slots:
        engine = Engine.load(args.model, slots=c, **bench.batching_settings(pairs[0][0]), cache_policy=pairs[0][1],
                             max_seqs=args.max_seqs, prefetch=args.prefetch, max_batch_tokens=args.max_batch_tokens,
                             max_batch_experts=args.max_batch_experts, transition_stats=args.transition_stats)
        if workload is None:
            workload = (bench.trace_workload(args.trace, args.max_new_tokens, args.requests) if args.trace else
                        bench.heldout_workload(engine, args.requests, args.max_new_tokens, args.seed))
        rows += bench.run_pairs(engine, workload, pairs, concurrency, args.prefetch)
        if args.calibrate:
            engine_rows = [r for r in rows if r["slots"] == c]
            expert_bytes = engine.store.expert_bytes if engine.store else 0
            for terms in bench.CALIBRATION_TERMS:
                cost, r2 = bench.calibrate(engine_rows, engine.cfg.n_layers, expert_bytes, terms)
                for row in engine_rows:
                    row.setdefault("calibration", {})[terms] = {"r2": r2, **{k: getattr(cost, k) for k in (
                        "step_overhead_s", "token_s", "prefill_token_s", "call_s", "expert_s", "admit_s",
                        "link_bytes_per_s")}}
                    row.setdefault("simulated", {})[terms] = bench.simulated(engine, row, concurrency, cost)
    if args.overhead:
        import readme_jax

        engine = Engine.load(args.model, max_seqs=args.max_seqs)
        prompt = list(max(workload, key=lambda spec: len(spec.prompt_ids)).prompt_ids)
        overhead = bench.overhead(readme_jax.load(args.model), engine, prompt, new_tokens=64)
    device = jax.devices()[0]
    result = {"model": args.model, "device": f"{device.platform} {device.device_kind}", "jax": jax.__version__,
              "requests": len(workload), "max_new_tokens": args.max_new_tokens, "concurrency": concurrency,
              "rows": bench.jsonable(rows)}
    if args.overhead:
        result["overhead"] = overhead
    if args.plot:
        result["plot"] = str(bench.plot(rows, args.plot))
    text = json.dumps(result, indent=2, sort_keys=True)
    if args.save:
        atomic.write_text(args.save, text)
    if args.json:
        print(text)
    else:
        print(f"{result['device']}, jax {result['jax']}: {len(workload)} requests, {args.max_new_tokens} new tokens, "
              f"{'closed loop x' + str(concurrency) if concurrency else 'open loop'}")
        print(bench.table(rows))
        for row in rows:
            if "calibration" in row and (row["batching"], row["cache"]) == pairs[0]:  # one line per C and fit
                for terms, cal in row["calibration"].items():
                    print(f"calibrated, {terms} terms (C={row['slots']}): {bench.describe_cost(cal)}")
        if args.overhead:
            o = result["overhead"]
            print(f"one request alone, every expert resident ({o['prompt_tokens']}-token prompt, {o['new_tokens']} "
                  f"new): engine {o['engine_tokens_per_s']:.1f} tok/s, lm.generate {o['lm_generate_tokens_per_s']:.1f}"
                  f" tok/s, ratio {o['ratio']:.2f}")
    return 0
