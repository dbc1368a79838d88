"""The two serving benchmarks behind ``readme-jax bench-cache`` and ``readme-jax bench-sched``.

bench-cache (Table 4 style):
1. Simulate the workload once with every expert resident and one batching policy, recording each iteration's
   distinct experts and when they were pre-gated (``SimResult.stream``).
2. Replay that one stream through every (capacity, policy) pair (``serve.cache_replay``). ``belady`` sees only
   pre-gated work (optionally within a window of iterations); ``belady-offline`` sees the whole recorded future
   and is the optimum any policy could reach on this stream.
3. Report hit ratio and bytes moved per pair.

bench-sched:
1. For every arrival rate, draw the workload (same seed) or take the trace, and simulate it under every
   batching policy with the same cache, cost model and budget.
2. Report latency percentiles, distinct experts and tokens per batch, throughput, the hit ratio when a cache is
   configured, and the wall-clock and CPU time of each simulation (measured here, never inside the simulator).
"""

import dataclasses
import time

from serve.cache_replay import replay
from serve.metrics import summarize
from serve.scheduler import SchedulerConfig
from serve.simulate import SimConfig, simulate

CACHE_COLUMNS = ("random", "fifo", "lru", "lfu", "belady", "belady-offline")


def run_cache_bench(
    specs,
    num_experts: int,
    scheduler: SchedulerConfig,
    cost,
    capacities,
    policies=CACHE_COLUMNS,
    unit: str = "expert",
    window_steps: int | None = None,
    seed: int = 0,
) -> dict:
    """Steps 1-3 of bench-cache; returns a JSON-serializable dict."""
    started = time.perf_counter()
    run = simulate(specs, num_experts, SimConfig(scheduler, cost, None, "layer", record_accesses=True))
    simulate_s = time.perf_counter() - started
    stream = run.stream
    key_bytes = cost.slice_bytes * (1 if unit == "slice" else cost.num_layers)
    rows = []
    for capacity in capacities:
        row = {"capacity": capacity, "policies": {}}
        for column in policies:
            policy = "belady" if column.startswith("belady") else column
            counters = replay(
                stream,
                capacity,
                policy,
                unit=unit,
                num_layers=cost.num_layers,
                lookahead="full" if column == "belady-offline" else "pregated",
                window_steps=None if column == "belady-offline" else window_steps,
                key_bytes=key_bytes,
                seed=seed,
            )
            row["policies"][column] = counters.as_dict()
        rows.append(row)
    summary = summarize(run)
    return {
        "bench": "cache",
        "unit": unit,
        "batching_policy": scheduler.policy,
        "max_batch_tokens": scheduler.max_batch_tokens,
        "window_steps": window_steps,
        "iterations": run.num_iterations,
        "accesses_per_iteration": summary["unique_experts_per_batch"] * (cost.num_layers if unit == "slice" else 1),
        "record_simulation_s": simulate_s,
        "rows": rows,
    }


def run_sched_bench(workloads, num_experts: int, policies, scheduler: SchedulerConfig, cost, cache, prefetch) -> dict:
    """bench-sched over ``workloads``: a list of (rate or None, specs) pairs."""
    runs = []
    for rate, specs in workloads:
        for policy in policies:
            config = SimConfig(dataclasses.replace(scheduler, policy=policy), cost, cache, prefetch)
            started, cpu_started = time.perf_counter(), time.process_time()
            result = simulate(specs, num_experts, config)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            summary = summarize(result)
            timing = {"simulate_wall_s": wall, "simulate_cpu_s": cpu}
            runs.append({"rate_per_s": rate, "policy": policy, **timing, **summary})
    return {
        "bench": "sched",
        "max_batch_tokens": scheduler.max_batch_tokens,
        "max_wait_iterations": scheduler.max_wait_iterations,
        "cache": None if cache is None else dataclasses.asdict(cache),
        "prefetch": prefetch,
        "runs": runs,
    }


def format_cache_table(result: dict) -> str:
    """Two Table-4-style blocks: hit ratio (%) and bytes moved (GB), capacity x policy."""
    columns = list(result["rows"][0]["policies"]) if result["rows"] else []
    width = max([len(c) for c in columns] + [8]) + 2
    head = "capacity".ljust(10) + "".join(c.rjust(width) for c in columns)
    lines = [
        f"Expert-cache replay: {result['iterations']} iterations of {result['batching_policy']} batching, "
        f"unit={result['unit']}, {result['accesses_per_iteration']:.2f} accesses per iteration",
        "",
        "hit ratio (%)",
        head,
    ]
    for row in result["rows"]:
        cells = "".join(f"{100 * row['policies'][c]['hit_ratio']:.2f}".rjust(width) for c in columns)
        lines.append(str(row["capacity"]).ljust(10) + cells)
    lines += ["", "bytes moved host->device (GB)", head]
    for row in result["rows"]:
        cells = "".join(f"{row['policies'][c]['bytes_moved'] / 1e9:.1f}".rjust(width) for c in columns)
        lines.append(str(row["capacity"]).ljust(10) + cells)
    lines.append("")
    lines.append(f"(recording simulation took {result['record_simulation_s']:.2f} s)")
    return "\n".join(lines)


def format_sched_table(result: dict) -> str:
    """One row per (rate, policy): latency (ms), experts and tokens per batch, throughput, wall time."""
    has_cache = result["cache"] is not None
    header = (
        f"{'rate/s':>7} {'policy':<14} {'experts/b':>9} {'tok/b':>7} {'norm mean':>10} {'norm p95':>9} "
        f"{'ttft p95':>9} {'tpot mean':>9} {'tok/s':>8}" + (f" {'hit %':>6}" if has_cache else "")
        + f" {'sim s':>6} {'cpu s':>6}"
    )
    note = "normalized latency, TTFT and TPOT in ms; sim s / cpu s: wall-clock / CPU seconds of each simulation"
    lines = [note, header]
    baseline = {}
    for run in result["runs"]:
        if run["policy"] == "decode-first":
            baseline[run["rate_per_s"]] = run
    for run in result["runs"]:
        rate = "trace" if run["rate_per_s"] is None else f"{run['rate_per_s']:g}"
        line = (
            f"{rate:>7} {run['policy']:<14} {run['unique_experts_per_batch']:>9.2f} {run['tokens_per_batch']:>7.1f} "
            f"{1e3 * run['normalized_latency_s']['mean']:>10.2f} {1e3 * run['normalized_latency_s']['p95']:>9.2f} "
            f"{1e3 * run['ttft_s']['p95']:>9.1f} {1e3 * run['tpot_s']['mean']:>9.2f} "
            f"{run['throughput_tokens_per_s']:>8.0f}"
        )
        if has_cache:
            line += f" {100 * run['cache']['hit_ratio']:>6.2f}"
        lines.append(line + f" {run['simulate_wall_s']:>6.2f} {run['simulate_cpu_s']:>6.2f}")
    if baseline:
        lines += ["", "change against decode-first at the same rate (negative is better)"]
        lines.append(f"{'rate/s':>7} {'policy':<14} {'experts/b':>10} {'norm mean':>10} {'norm p95':>10}")
        for run in result["runs"]:
            base = baseline.get(run["rate_per_s"])
            if base is None or run["policy"] == "decode-first":
                continue
            rate = "trace" if run["rate_per_s"] is None else f"{run['rate_per_s']:g}"
            lines.append(
                f"{rate:>7} {run['policy']:<14} "
                f"{_change(run['unique_experts_per_batch'], base['unique_experts_per_batch']):>10} "
                f"{_change(run['normalized_latency_s']['mean'], base['normalized_latency_s']['mean']):>10} "
                f"{_change(run['normalized_latency_s']['p95'], base['normalized_latency_s']['p95']):>10}"
            )
    return "\n".join(lines)


def _change(value: float, base: float) -> str:
    return f"{100 * (value - base) / base:+.1f}%" if base else "n/a"
