"""Workloads for ``bench-cache`` / ``bench-sched`` from their flags, and the header lines that describe them.

A trace file (its recorded arrivals, rescaled to ``--rate(s)``, or redrawn with ``--arrival-cv``) or the
synthetic Markov workload; ``--concurrency`` (closed-loop clients) excludes the flags that shape open-loop
arrivals. Split from ``serve.sim.cli`` so that each file holds one idea: that module parses and prints.
"""

import dataclasses
import platform

from serve.sim.simulate import check_concurrency
from serve.sim.trace import Trace, TraceHeader, read_trace, write_trace
from serve.core.types import ServeError
from serve.sim.workload import (
    WorkloadConfig,
    check_positive,
    mean_rate,
    repeat_rate,
    rescale_rate,
    retime_arrivals,
    synthetic_workload,
)

DEFAULT_EXPERTS = 7  # the paper's Llama-2 model (Table 4 uses capacities 2..5 of 7)


def check_closed_loop(args, rates_flag: str, rates) -> None:
    """--concurrency replaces the arrival process, so the flags that shape arrivals cannot come with it."""
    if args.concurrency is None:
        return
    check_concurrency(args.concurrency)
    if rates is not None:
        raise ServeError(
            f"{rates_flag} sets an open-loop arrival rate; it cannot be combined with --concurrency "
            f"{args.concurrency} (closed-loop clients issue requests as earlier ones finish)"
        )
    if args.arrival_cv is not None:
        raise ServeError(
            f"--arrival-cv {args.arrival_cv:g} shapes open-loop arrivals; it cannot be combined with --concurrency "
            f"{args.concurrency}"
        )


def workloads_from_args(args, rates):
    """[(rate or None, specs)], E, the trace's layer count, and a description of the workload."""
    if args.requests is not None and args.requests < 1:
        raise ServeError(f"--requests {args.requests} must be >= 1")
    if args.arrival_cv is not None:
        try:
            check_positive("arrival_cv", args.arrival_cv)
        except ServeError as exc:
            raise ServeError(f"--arrival-cv {args.arrival_cv!r}: {exc}") from None
    if args.trace is not None:
        if args.save_trace is not None:
            raise ServeError("--save-trace writes a synthetic workload; it cannot be combined with --trace")
        trace = read_trace(args.trace)
        num_experts = trace.header.num_experts
        if args.num_experts is not None and args.num_experts != num_experts:
            raise ServeError(f"--num-experts {args.num_experts} contradicts the trace's num_experts={num_experts}")
        specs = list(trace.requests[: args.requests])
        description = {
            "trace": str(args.trace),
            "source": trace.header.source,
            "requests": len(specs),
            "trace_rate_per_s": mean_rate(specs),
            "arrival_cv": args.arrival_cv,
        }
        if args.arrival_cv is not None:
            # A Gamma renewal process with this CV replaces the recorded arrivals; requests and order stay.
            description["arrival_seed"] = args.seed
            if rates is None:
                retimed = retime_arrivals(specs, description["trace_rate_per_s"], args.arrival_cv, args.seed)
                return [(None, retimed)], num_experts, trace.header.num_layers, description
            description["redrawn_at_rates_per_s"] = rates
            workloads = [(rate, retime_arrivals(specs, rate, args.arrival_cv, args.seed)) for rate in rates]
            return workloads, num_experts, trace.header.num_layers, description
        if rates is None:
            return [(None, specs)], num_experts, trace.header.num_layers, description
        # The recorded arrival pattern, stretched in time: one trace serves every load (serve.sim.workload).
        description["rescaled_to_rates_per_s"] = rates
        workloads = [(rate, rescale_rate(specs, rate)) for rate in rates]
        return workloads, num_experts, trace.header.num_layers, description
    num_experts = DEFAULT_EXPERTS if args.num_experts is None else args.num_experts
    workloads = []
    config = None
    for rate in rates:
        config = WorkloadConfig(
            num_requests=1000 if args.requests is None else args.requests,
            rate_per_s=rate,
            num_experts=num_experts,
            popularity_skew=args.skew,
            stay=args.stay,
            home_weight=args.home_weight,
            prompt_max=args.prompt_max,
            seed=args.seed,
            **({} if args.arrival_cv is None else {"arrival_cv": args.arrival_cv}),
        )
        workloads.append((rate, synthetic_workload(config)))
    specs = workloads[0][1]
    description = {
        "synthetic": {k: v for k, v in dataclasses.asdict(config).items() if k != "rate_per_s"},
        "rates_per_s": rates,
        "arrival_cv": config.arrival_cv,
        "repeat_rate": repeat_rate(specs),
    }
    if args.save_trace is not None:
        header = TraceHeader(num_experts, None, "synthetic-markov", {"workload": dataclasses.asdict(config)})
        write_trace(args.save_trace, Trace(header, tuple(workloads[-1][1])))
    return workloads, num_experts, None, description


def describe(description: dict, args) -> str:
    return describe_workload(description) + "\n" + describe_batching(args)


def describe_batching(args) -> str:
    cap = "none" if args.max_batch_requests is None else args.max_batch_requests
    if args.concurrency is None:
        clients = "arrivals: open loop"
    else:
        clients = (
            f"arrivals: closed loop, concurrency={args.concurrency} clients (requests issued in trace order as "
            f"earlier ones finish; recorded arrival times ignored)"
        )
    return (
        f"batching: max_batch_tokens={args.max_batch_tokens}, max_batch_requests={cap}, max_wait={args.max_wait}\n"
        + clients
    )


def describe_workload(description: dict) -> str:
    if "trace" in description:
        line = (
            f"workload: trace {description['trace']} ({description['requests']} requests, "
            f"{description['trace_rate_per_s']:.3g} requests/s"
        )
        if description["arrival_cv"] is not None:
            redrawn = ",".join(f"{r:g}" for r in description.get("redrawn_at_rates_per_s", [])) or "the trace's rate"
            line += (
                f", arrivals redrawn: Gamma renewal, arrival_cv={description['arrival_cv']:g}, "
                f"seed {description['arrival_seed']}, at {redrawn} requests/s"
            )
        elif "rescaled_to_rates_per_s" in description:
            rescaled = ",".join(f"{r:g}" for r in description["rescaled_to_rates_per_s"])
            line += f", arrivals rescaled to {rescaled} requests/s"
        return line + f"); python {platform.python_version()}"
    synthetic = description["synthetic"]
    return (
        f"workload: SYNTHETIC Markov experts, {synthetic['num_requests']} requests, E={synthetic['num_experts']}, "
        f"arrival_cv={synthetic['arrival_cv']:g}, stay={synthetic['stay']}, home_weight={synthetic['home_weight']}, "
        f"skew={synthetic['popularity_skew']}, "
        f"seed={synthetic['seed']}, repeat rate {description['repeat_rate']:.3f}; python {platform.python_version()}"
    )
