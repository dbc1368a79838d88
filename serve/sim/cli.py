"""``readme-jax bench-cache`` and ``readme-jax bench-sched``: argument parsing and output only.

``readme_jax.cli`` owns the one parser and calls ``register(subparsers)``. The work is in ``serve.sim.bench``; this
module turns flags into configs (bad values raise ``ServeError``, which the CLI prints as ``error: ...`` with
exit code 2), picks the workload (``serve.sim.cli_workload``: a JSONL trace, or the synthetic Markov workload),
and prints either tables or one JSON object. Both commands write a PNG plot unless ``--no-plot``.
"""

import argparse
import dataclasses
import json
import math
import platform

from serve.sim import bench, cli_stats
from serve.core.cache_policies import POLICY_NAMES
from serve.sim.cli_workload import (
    DEFAULT_EXPERTS,
    check_closed_loop,
    describe,
    workloads_from_args,
)
from serve.sim.cost_model import CostModel, llama2_7b_a100
from serve.core.expert_cache import UNITS, CacheConfig
from serve.core.prefetch import PREFETCH_MODES
from serve.core.scheduler import POLICIES, SchedulerConfig
from serve.core.types import ServeError
from serve.sim.workload import (
    WorkloadConfig,
)

_WORKLOAD = WorkloadConfig()  # defaults of the synthetic workload


def register(sub) -> None:
    """Add ``bench-cache``, ``bench-sched`` and ``transition-stats`` to the project's sub-parsers."""
    cache = sub.add_parser(
        "bench-cache",
        help="expert-cache hit ratios (Table 4 style) on a replayed access stream",
        description="Replay one batched expert-access stream through every cache policy and capacity.",
    )
    _add_common(cache, "out/bench-cache.png")
    cache.add_argument(
        "--rate",
        type=float,
        default=None,
        help="arrival rate of the synthetic workload (default 6); with --trace, the trace's arrivals rescaled to it "
        "(or redrawn at it with --arrival-cv)",
    )
    cache.add_argument("--batching", default="expert-aware", choices=POLICIES, help="policy that forms the batches")
    cache.add_argument("--capacities", default="2,3,4,5", help="comma-separated capacities (default 2,3,4,5)")
    cache.add_argument(
        "--policies",
        default=",".join(bench.CACHE_COLUMNS),
        help=f"comma-separated, from {', '.join(bench.CACHE_POLICIES)} (default: all but {bench.EXPECTED}, which "
        "runs in the loop only: --regime memory-limited)",
    )
    cache.add_argument("--unit", default="expert", choices=UNITS, help="capacity in whole experts or layer slices")
    cache.add_argument("--window", default="none", help="Belady lookahead in iterations, or none (all pre-gated work)")
    cache.add_argument(
        "--regime",
        default="resident",
        choices=bench.REGIMES,
        help="resident: record the stream with every expert resident; memory-limited: record each capacity's stream "
        "with a cache of that capacity in the loop (Belady), and also report each policy serving with the cache "
        "in the loop",
    )
    _add_lookahead_continuing(cache)
    cli_stats.add_forecast_flags(cache)
    cache.set_defaults(func=_bench_cache)

    sched = sub.add_parser(
        "bench-sched",
        help="latency and distinct experts per batch for each batching policy (simulated)",
        description="Simulate the workload under every batching policy and compare latency and batch composition.",
    )
    _add_common(sched, "out/bench-sched.png")
    sched.add_argument(
        "--rates",
        default=None,
        help="comma-separated arrival rates (default 6,12,18); with --trace, the trace's arrivals are rescaled to each "
        "(or redrawn at each with --arrival-cv)",
    )
    sched.add_argument("--policies", default=",".join(POLICIES), help=f"comma-separated, from {', '.join(POLICIES)}")
    sched.add_argument("--cache-capacity", type=int, default=None, help="expert-cache capacity (default: all resident)")
    sched.add_argument("--cache-policy", default="belady", choices=POLICY_NAMES)
    sched.add_argument("--unit", default="expert", choices=UNITS)
    sched.add_argument("--prefetch", default="layer", choices=PREFETCH_MODES)
    sched.add_argument("--lookahead-items", default="1024", help="pending items Belady may scan, or none")
    _add_lookahead_continuing(sched)
    cli_stats.add_forecast_flags(sched)
    sched.set_defaults(func=_bench_sched)
    cli_stats.register(sub)


def _add_lookahead_continuing(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lookahead-continuing",
        action="store_true",
        help="in-loop Belady lookahead: count each running request that keeps decoding as a pending token on its "
        "current token's expert (temporal-locality guess), placed where the batching policy would queue it. "
        "Default: an expert with no pending pre-gated work is never needed again",
    )


def _add_common(parser: argparse.ArgumentParser, plot_default: str) -> None:
    work = parser.add_argument_group("workload")
    work.add_argument("--trace", default=None, help="replay this JSONL trace instead of a synthetic workload")
    work.add_argument(
        "--requests", type=int, default=None, help="synthetic requests (default 1000); with --trace, its first N"
    )
    work.add_argument("--num-experts", type=int, default=None, help=f"experts E (default {DEFAULT_EXPERTS})")
    work.add_argument("--seed", type=int, default=0)
    work.add_argument(
        "--arrival-cv",
        type=float,
        default=None,
        help="coefficient of variation of inter-arrival gaps (Gamma renewal; 1 = Poisson, > 1 bursty). Synthetic: "
        "the workload's arrival process (default 1). With --trace: arrivals redrawn from it (seeded by --seed) at "
        "each --rate/--rates, else at the trace's mean rate (default: keep the trace's own arrivals)",
    )
    work.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="closed loop: C clients replay the requests in order, each sending its next request when the previous "
        "one finishes (the first C at t = 0; recorded arrival times ignored). Default: open loop. Not combinable "
        "with --rate/--rates or --arrival-cv",
    )
    work.add_argument("--stay", type=float, default=_WORKLOAD.stay, help="Markov run continuation probability")
    work.add_argument("--home-weight", type=float, default=_WORKLOAD.home_weight, help="weight of the home expert")
    work.add_argument("--skew", type=float, default=_WORKLOAD.popularity_skew, help="Zipf popularity exponent")
    work.add_argument("--prompt-max", type=int, default=_WORKLOAD.prompt_max, help="longest synthetic prompt")
    work.add_argument("--save-trace", default=None, help="also write the synthetic workload (of the last rate) as a JSONL trace")
    batching = parser.add_argument_group("batching")
    batching.add_argument("--max-batch-tokens", type=int, default=256)
    batching.add_argument(
        "--max-batch-requests",
        type=int,
        default=None,
        help="sequence cap: at most N work items (sequences) per batch (default: no cap)",
    )
    batching.add_argument("--max-wait", default="32", help="starvation bound in iterations, or none")
    batching.add_argument("--prefer-resident", type=float, default=0.0, metavar="W",
                          help="expert-aware batching: a resident expert's queue counts as (1 + W) times its tokens "
                               "(needs an expert-unit cache; default 0: the paper's Algorithm 1)")
    cost = parser.add_argument_group("cost model (defaults: Llama-2-7B Read-ME on an A100, see docs/serving.md)")
    cost.add_argument("--num-layers", type=int, default=None, help="N (default: the trace's, else 32)")
    cost.add_argument("--slice-mb", type=float, default=None, help="MB of one expert in one layer")
    cost.add_argument("--link-gbps", type=float, default=None, help="host-to-device GB/s")
    cost.add_argument("--step-overhead-ms", type=float, default=None)
    cost.add_argument("--token-us", type=float, default=None)
    cost.add_argument("--expert-ms", type=float, default=None)
    cost.add_argument("--prefill-token-us", type=float, default=None, help="per prefill token (default: --token-us)")
    cost.add_argument("--call-ms", type=float, default=None, help="per program call (default 0; bench-engine "
                                                                  "--calibrate fits it)")
    cost.add_argument("--admit-ms", type=float, default=None, help="per admitted prompt (default 0)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    out.add_argument("--plot", default=plot_default, help=f"PNG path (default {plot_default})")
    out.add_argument("--no-plot", action="store_true")


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ServeError(f"{flag} {text!r}: expected comma-separated integers") from None
    if not values:
        raise ServeError(f"{flag} is empty")
    return values


def _float_list(text: str, flag: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ServeError(f"{flag} {text!r}: expected comma-separated numbers") from None
    if not values:
        raise ServeError(f"{flag} is empty")
    return values


def _names(text: str, allowed, flag: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    for name in names:
        if name not in allowed:
            raise ServeError(f"{flag}: unknown name {name!r}; choose from {', '.join(allowed)}")
    if not names:
        raise ServeError(f"{flag} is empty")
    return names


def _optional_int(text: str, flag: str):
    if text.strip().lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise ServeError(f"{flag} {text!r}: expected an integer or none") from None


# (flag's attribute, CostModel field, unit of the flag in the field's unit)
_COST_FLAGS = (
    ("link_gbps", "link_bytes_per_s", 1e9),
    ("step_overhead_ms", "step_overhead_s", 1e-3),
    ("token_us", "token_s", 1e-6),
    ("expert_ms", "expert_s", 1e-3),
    ("prefill_token_us", "prefill_token_s", 1e-6),
    ("call_ms", "call_s", 1e-3),
    ("admit_ms", "admit_s", 1e-3),
)


def _cost(args, trace_layers) -> CostModel:
    base = llama2_7b_a100()
    changes = {}
    if args.num_layers is not None:
        changes["num_layers"] = args.num_layers
    elif trace_layers is not None:
        changes["num_layers"] = trace_layers
    if args.slice_mb is not None:
        changes["slice_bytes"] = round(args.slice_mb * 1e6)
    for flag, field, scale in _COST_FLAGS:
        value = getattr(args, flag)
        if value is not None:
            changes[field] = value * scale
    return dataclasses.replace(base, **changes)


def _scheduler(args, policy: str) -> SchedulerConfig:
    return SchedulerConfig(
        policy, args.max_batch_tokens, _optional_int(args.max_wait, "--max-wait"), args.max_batch_requests,
        prefer_resident=args.prefer_resident if policy == "expert-aware" else 0.0,
    )


def _environment() -> dict:
    return {"python": platform.python_version(), "machine": platform.machine(), "system": platform.system()}


def _finish(args, result: dict, table: str, plot) -> int:
    if not args.no_plot:
        result["plot"] = str(plot(result, args.plot))
    if args.json:
        print(json.dumps(_jsonable(result), sort_keys=True))
    else:
        print(table)
        if "plot" in result:
            print(f"plot written to {result['plot']}")
    return 0


def _jsonable(value):
    """NaN/inf become null: one strict JSON object, whatever the run produced."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _bench_cache(args) -> int:
    from serve.sim.plots import plot_cache

    rates = None if args.rate is None else [args.rate]
    check_closed_loop(args, "--rate", rates)
    workloads, num_experts, trace_layers, description = workloads_from_args(args, rates if args.trace else rates or [6.0])
    cost = _cost(args, trace_layers)
    capacities = _int_list(args.capacities, "--capacities")
    for capacity in capacities:  # validates each capacity against E (and N for slices)
        CacheConfig(num_experts, cost.num_layers, capacity, args.unit)
    policies = _names(args.policies, bench.CACHE_POLICIES, "--policies")
    window = _optional_int(args.window, "--window")
    if window is not None and window < 0:
        raise ServeError(f"--window {window} must be >= 0 or none")
    specs = workloads[0][1]
    result = bench.run_cache_bench(
        specs,
        num_experts,
        _scheduler(args, args.batching),
        cost,
        capacities,
        policies,
        args.unit,
        window,
        args.seed,
        args.regime,
        args.concurrency,
        args.lookahead_continuing,
        cli_stats.next_use_from_args(args, num_experts),
    )
    result.update(workload=description, cost=dataclasses.asdict(cost), num_experts=num_experts, env=_environment())
    header = describe(description, args)
    if bench.EXPECTED in policies:
        header += "\n" + cli_stats.describe_forecast(args)
        result["forecast"] = cli_stats.forecast_json(args)
    return _finish(args, result, header + "\n" + bench.format_cache_table(result), plot_cache)


def _bench_sched(args) -> int:
    from serve.sim.plots import plot_sched

    rates = None if args.rates is None else _float_list(args.rates, "--rates")
    check_closed_loop(args, "--rates", rates)
    # Closed loop ignores arrival times, so a synthetic workload is drawn once (at the default rate 6).
    synthetic_rates = [6.0] if args.concurrency is not None else [6.0, 12.0, 18.0]
    workloads, num_experts, trace_layers, description = workloads_from_args(
        args, rates if args.trace else rates or synthetic_rates
    )
    cost = _cost(args, trace_layers)
    policies = _names(args.policies, POLICIES, "--policies")
    cache = None
    if args.cache_capacity is not None:
        cache = CacheConfig(
            num_experts,
            cost.num_layers,
            args.cache_capacity,
            args.unit,
            args.cache_policy,
            args.seed,
            _optional_int(args.lookahead_items, "--lookahead-items"),
        )
    scheduler = _scheduler(args, "expert-aware")  # run_sched_bench sets each policy (and drops W for the others)
    result = bench.run_sched_bench(
        workloads,
        num_experts,
        policies,
        scheduler,
        cost,
        cache,
        args.prefetch,
        args.concurrency,
        args.lookahead_continuing,
        cli_stats.next_use_from_args(args, num_experts),
    )
    result.update(workload=description, cost=dataclasses.asdict(cost), num_experts=num_experts, env=_environment())
    header = describe(description, args)
    if cache is not None and cache.policy == bench.EXPECTED:
        header += "\n" + cli_stats.describe_forecast(args)
        result["forecast"] = cli_stats.forecast_json(args)
    return _finish(args, result, header + "\n" + bench.format_sched_table(result), plot_sched)
