"""``readme-jax serve`` (the OpenAI-compatible server) and ``readme-jax bench-serve`` (its benchmark client).

fastapi, uvicorn and httpx are imported only when one of these commands runs, so the other commands start fast.
"""

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server over the expert-offloading engine",
                       description="Serve /v1/completions, /v1/chat/completions (streaming too), /v1/models, "
                                   "/health, /metrics and /v1/readme/stats. Binds to loopback unless --host says "
                                   "otherwise; SIGTERM drains in-flight requests, then exits 0.")
    p.add_argument("--model", default="default", help="'default' or a Read-ME MoE folder (default: default)")
    p.add_argument("--slots", type=int, default=None, help="device expert slots C (default: every expert)")
    p.add_argument("--cache-policy", default="belady", help="expert cache eviction policy (default belady)")
    p.add_argument("--batching", default="expert-aware", help="batching policy (default expert-aware)")
    p.add_argument("--prefer-resident", type=float, default=0.0, metavar="W",
                   help="expert-aware batching: a resident expert's queue counts as (1 + W) times its tokens when "
                        "the next queue is chosen, so batches keep to the experts in the slots (default 0: the "
                        "paper's Algorithm 1)")
    p.add_argument("--prefetch", default="next", help="expert prefetch mode (default next)")
    p.add_argument("--transition-stats", default=None, metavar="STATS.json",
                   help="--cache-policy belady-expected: statistics its forecast starts from (readme-jax "
                        "transition-stats); it keeps learning from the tokens served (default: from nothing)")
    p.add_argument("--max-seqs", type=int, default=16, help="requests generating at once (default 16)")
    p.add_argument("--max-waiting", type=int, default=64,
                   help="requests admitted but not yet running; beyond it 429 with Retry-After (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--served-model-name", default=None, help="the model id clients send (default: the engine's)")
    p.add_argument("--grace-s", type=float, default=30.0,
                   help="seconds SIGTERM waits for in-flight requests before cancelling them (default 30)")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run_serve)

    b = sub.add_parser("bench-serve", help="benchmark a running server over HTTP (vLLM bench serve's metrics)",
                       description="Send a workload of streaming requests to a readme-jax (or any OpenAI-"
                                   "compatible) server and report TTFT, TPOT, ITL and end-to-end latency, request "
                                   "and token throughput, and the server's expert-cache counters.")
    b.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL (default http://127.0.0.1:8000)")
    b.add_argument("--endpoint", default="/v1/completions", choices=("/v1/completions", "/v1/chat/completions"))
    b.add_argument("--model", default=None, help="model id (default: the server's first, from /v1/models)")
    b.add_argument("--workload", default="heldout",
                   help="'heldout' (held-out domain text), 'synthetic' or a routing trace .jsonl (its prompt_ids)")
    b.add_argument("--num-prompts", type=int, default=64, help="requests to send (default 64)")
    b.add_argument("--prompt-tokens", type=int, default=64, help="prompt length for heldout/synthetic (default 64)")
    b.add_argument("--max-tokens", type=int, default=32, help="max_tokens per request (a trace: its output length)")
    b.add_argument("--request-rate", type=float, default=float("inf"),
                   help="open-loop arrivals per second (default inf: all at once)")
    b.add_argument("--burstiness", type=float, default=1.0,
                   help="gamma shape of the arrival gaps: 1 = Poisson, < 1 burstier (default 1)")
    b.add_argument("--max-concurrency", type=int, default=None, help="closed loop: at most this many in flight")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--timeout-s", type=float, default=600.0, help="per-request timeout (default 600)")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--save", default=None, help="also write the JSON result to this path")
    b.add_argument("--plot", default=None, help="write a PNG of the latency distributions to this path")
    b.add_argument("--overhead", default=None, metavar="MODEL",
                   help="instead of --url: load MODEL ('default' or a MoE folder) here, serve it on loopback and "
                        "compare one streaming request alone over HTTP with the same engine in process")
    b.add_argument("--slots", type=int, default=None, help="with --overhead: device expert slots (default: all)")
    b.add_argument("--repeats", type=int, default=3, help="with --overhead: timed runs each way (default 3)")
    b.set_defaults(func=run_bench_serve)


def run_serve(args) -> int:
    from serve.http.server import bind, run

    bind(args.host, args.port).close()  # a port in use fails before the model loads
    from serve.engine import Engine
    from serve.http.app import ServerConfig, create_app

    config = ServerConfig(max_waiting=args.max_waiting, model_name=args.served_model_name)
    engine = Engine.load(args.model, slots=args.slots, cache_policy=args.cache_policy, batching=args.batching,
                         max_seqs=args.max_seqs, prefetch=args.prefetch, seed=args.seed,
                         prefer_resident=args.prefer_resident, transition_stats=args.transition_stats)
    app = create_app(engine, config, source=args.model)
    return run(app, args.host, args.port, grace_s=args.grace_s, log_level=args.log_level)


def run_bench_serve(args) -> int:
    from serve.http import bench

    if args.overhead:
        return run_overhead(args)
    result = bench.run_from_args(args)
    if args.save:
        from readme_jax import atomic

        atomic.write_text(args.save, json.dumps(result, indent=2, sort_keys=True))
    if args.plot:
        result["plot"] = str(bench.plot(result, args.plot))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(bench.format_table(result))
        if args.plot:
            print(f"plot written to {result['plot']}", file=sys.stderr)
    return 0


def run_overhead(args) -> int:
    from serve.engine import Engine
    from serve.http import bench, overhead

    engine = Engine.load(args.overhead, slots=args.slots, max_seqs=1, seed=args.seed)
    prompt = bench.workload(args.workload, 1, args.prompt_tokens, args.max_tokens, args.seed)[0][0]
    ids = prompt if isinstance(prompt, list) else engine.tokenizer.encode(prompt, add_special_tokens=True)
    result = overhead.measure(engine, ids, args.max_tokens, args.repeats)
    result.update(model=args.overhead, slots=engine.slots, experts=engine.num_experts)
    if args.save:
        from readme_jax import atomic

        atomic.write_text(args.save, json.dumps(result, indent=2, sort_keys=True))
    print(json.dumps(result, sort_keys=True) if args.json else overhead.format_table(result))
    return 0
