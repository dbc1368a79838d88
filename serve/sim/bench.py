"""The two serving benchmarks behind ``readme-jax bench-cache`` and ``readme-jax bench-sched``.

bench-cache (Table 4 style):
1. Simulate the workload with one batching policy, recording each iteration's distinct experts and when they
   were pre-gated (``SimResult.stream``). Regime ``resident``: once, with every expert resident. Regime
   ``memory-limited``: once per capacity, with a cache of that capacity (Belady) in the loop. The cache decides
   how long iterations take, hence how much work piles up and which batches the policy forms, so a stream
   recorded with every expert resident is not the one a memory-limited server replays.
2. Replay each stream through every policy at its capacity (``serve.sim.cache_replay``). ``belady`` sees only
   pre-gated work (optionally within a window of iterations); ``belady-offline`` sees the whole recorded future
   and is the optimum any policy could reach on this stream.
3. Memory-limited only: also simulate the server with each online policy in the loop ("closed loop" in the
   JSON key ``closed_loop``: the cache's loop, unrelated to closed-loop clients, ``concurrency``). Its hit
   ratio is what that policy would get serving the workload, with the simulator's own lookahead for Belady
   (``serve.core.lookahead.QueueLookahead``), which knows only the pending work and not the recorded future order.
4. Report hit ratio and bytes moved per (capacity, policy).
5. Memory-limited, with lru and belady-offline among the policies: the share of the LRU -> offline-optimum
   gap each policy closes in the loop, (hit - LRU) / (offline - LRU), LRU taken in the loop.

bench-sched:
1. For every arrival rate, draw the workload (same seed) or take the trace, and simulate it under every
   batching policy with the same cache, cost model and budget.
2. Report latency percentiles, distinct experts and tokens per batch, throughput, the hit ratio when a cache is
   configured, and the wall-clock and CPU time of each simulation (measured here, never inside the simulator).
"""

import dataclasses
import math
import time

from serve.core.cache_policies import EXPECTED
from serve.sim.cache_replay import replay
from serve.core.expert_cache import CacheConfig
from serve.core.metrics import summarize
from serve.core.scheduler import SchedulerConfig
from serve.sim.simulate import SimConfig, simulate
from serve.core.types import ServeError

CACHE_COLUMNS = ("random", "fifo", "lru", "lfu", "belady", "belady-offline")  # the default columns
CACHE_POLICIES = CACHE_COLUMNS + (EXPECTED,)  # what --policies accepts; belady-expected runs in the loop only
REGIMES = ("resident", "memory-limited")


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
    regime: str = "resident",
    concurrency: int | None = None,
    lookahead_continuing: bool = False,
    next_use=None,
) -> dict:
    """Steps 1-4 of bench-cache; returns a JSON-serializable dict. ``concurrency``: closed-loop clients for
    every simulation (``SimConfig.concurrency``), None for open-loop arrivals. ``lookahead_continuing``: the
    in-loop lookahead's guess of the running batch's next tokens (``SimConfig.lookahead_continuing``), for every
    simulation; the replays (step 2) are unaffected except through the recorded stream. ``next_use``: the
    forecast of ``belady-expected`` (``SimConfig.next_use``). That policy needs the live requests, which a
    recorded stream does not hold, so it has no replay column and is reported in the loop (step 3) only, with
    the share of the LRU -> offline-optimum gap each in-loop policy closes (step 5)."""
    if regime not in REGIMES:
        raise ServeError(f"unknown regime {regime!r}; choose one of {', '.join(REGIMES)}")
    if EXPECTED in policies and regime != "memory-limited":
        raise ServeError(f"policy {EXPECTED} runs with the cache in the loop only: use --regime memory-limited")
    key_bytes = cost.slice_bytes * (1 if unit == "slice" else cost.num_layers)

    def sim_config(cache, record: bool = False) -> SimConfig:
        return SimConfig(scheduler, cost, cache, "layer", record_accesses=record, concurrency=concurrency,
                         lookahead_continuing=lookahead_continuing, next_use=next_use)

    keys_per_expert = cost.num_layers if unit == "slice" else 1  # a slice access per layer
    record_s = last_record_s = 0.0
    recorded = None
    rows = []
    for capacity in capacities:
        cache = None
        if regime == "memory-limited":
            cache = CacheConfig(num_experts, cost.num_layers, capacity, unit, "belady", seed)
        if recorded is None or cache is not None:  # step 1: the resident stream is recorded once
            started = time.perf_counter()
            run = simulate(specs, num_experts, sim_config(cache, record=True))
            last_record_s = time.perf_counter() - started
            record_s += last_record_s
            recorded = (run, summarize(run))
        run, summary = recorded
        row = {
            "capacity": capacity,
            "iterations": run.num_iterations,
            "accesses_per_iteration": summary["unique_experts_per_batch"] * keys_per_expert,
            "tokens_per_batch": summary["tokens_per_batch"],
            "policies": {},
        }
        for column in policies:  # step 2
            if column == EXPECTED:
                continue
            policy = "belady" if column.startswith("belady") else column
            counters = replay(
                run.stream,
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
        if cache is not None:  # step 3
            row["closed_loop"] = {}
            row["loop_seconds"] = {}  # wall time of each policy's simulation (the recording one for belady)
            for column in policies:
                if column == "belady-offline":
                    continue  # needs the recorded future, which a server in the loop does not have
                if column == "belady":
                    counters = run.cache
                    row["loop_seconds"][column] = last_record_s
                else:
                    loop_cache = dataclasses.replace(cache, policy=column)
                    started = time.perf_counter()
                    counters = simulate(specs, num_experts, sim_config(loop_cache)).cache
                    row["loop_seconds"][column] = time.perf_counter() - started
                row["closed_loop"][column] = counters.as_dict()
            row["gap_closed"] = _gap_closed(row)
        rows.append(row)
    first = rows[0] if rows else {"iterations": 0, "accesses_per_iteration": math.nan}
    result = {
        "bench": "cache",
        "regime": regime,
        "unit": unit,
        "batching_policy": scheduler.policy,
        "max_batch_tokens": scheduler.max_batch_tokens,
        "max_batch_requests": scheduler.max_batch_requests,
        "concurrency": concurrency,
        "window_steps": window_steps,
        "iterations": first["iterations"],
        "accesses_per_iteration": first["accesses_per_iteration"],
        "record_simulation_s": record_s,
        "rows": rows,
    }
    if lookahead_continuing:  # only when on, so that the default output stays as it was
        result["lookahead_continuing"] = True
    return result


def _gap_closed(row: dict) -> dict:
    """Step 5: (hit ratio in the loop - LRU's in the loop) / (offline optimum - LRU's), per in-loop policy;
    empty without the lru and belady-offline columns, nan when the optimum does not beat LRU."""
    loop = row["closed_loop"]
    if "lru" not in loop or "belady-offline" not in row["policies"]:
        return {}
    lru = loop["lru"]["hit_ratio"]
    gap = row["policies"]["belady-offline"]["hit_ratio"] - lru
    return {name: (c["hit_ratio"] - lru) / gap if gap > 0 else math.nan for name, c in loop.items() if name != "lru"}


def run_sched_bench(
    workloads,
    num_experts: int,
    policies,
    scheduler: SchedulerConfig,
    cost,
    cache,
    prefetch,
    concurrency=None,
    lookahead_continuing: bool = False,
    next_use=None,
) -> dict:
    """bench-sched over ``workloads``: a list of (rate or None, specs) pairs. ``concurrency``: closed-loop
    clients (``SimConfig.concurrency``), None for open-loop arrivals. ``lookahead_continuing``:
    ``SimConfig.lookahead_continuing``."""
    runs = []
    for rate, specs in workloads:
        for policy in policies:
            config = SimConfig(
                # prefer_resident is a knob of expert-aware batching only; the other policies run without it
                dataclasses.replace(scheduler, policy=policy,
                                    prefer_resident=scheduler.prefer_resident if policy == "expert-aware" else 0.0),
                cost,
                cache,
                prefetch,
                concurrency=concurrency,
                lookahead_continuing=lookahead_continuing,
                next_use=next_use,
            )
            started, cpu_started = time.perf_counter(), time.process_time()
            result = simulate(specs, num_experts, config)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            summary = summarize(result)
            timing = {"simulate_wall_s": wall, "simulate_cpu_s": cpu}
            runs.append({"rate_per_s": rate, "policy": policy, **timing, **summary})
    result = {
        "bench": "sched",
        "max_batch_tokens": scheduler.max_batch_tokens,
        "max_batch_requests": scheduler.max_batch_requests,
        "max_wait_iterations": scheduler.max_wait_iterations,
        "prefer_resident": scheduler.prefer_resident,
        "concurrency": concurrency,
        "cache": None if cache is None else dataclasses.asdict(cache),
        "prefetch": prefetch,
        "runs": runs,
    }
    if lookahead_continuing:  # only when on, so that the default output stays as it was
        result["lookahead_continuing"] = True
    return result


def format_cache_table(result: dict) -> str:
    """Table-4-style blocks, capacity x policy: hit ratio (%) and bytes moved (GB) on the replayed stream, and
    for the memory-limited regime the hit ratio of each policy serving with the cache in the loop."""
    rows = result["rows"]
    columns = list(rows[0]["policies"]) if rows else []
    # Every block shares one width, wide enough for the in-loop columns too (belady-expected has no replay).
    names = columns + [c for row in rows[:1] for c in row.get("closed_loop", {})]
    width = max([len(c) for c in names] + [8]) + 2
    head = "capacity".ljust(10) + "".join(c.rjust(width) for c in columns)
    memory_limited = result.get("regime") == "memory-limited"
    if memory_limited:
        lines = [
            f"Expert-cache replay, memory-limited: each capacity's stream recorded with a Belady cache of that "
            f"capacity in the loop, {result['batching_policy']} batching, unit={result['unit']}",
            "",
            "capacity  iterations  accesses/iteration  tokens/batch",
        ]
        for row in rows:
            lines.append(
                f"{row['capacity']:<9} {row['iterations']:>10} {row['accesses_per_iteration']:>19.2f} "
                f"{row['tokens_per_batch']:>13.1f}"
            )
    else:
        lines = [
            f"Expert-cache replay: {result['iterations']} iterations of {result['batching_policy']} batching, "
            f"unit={result['unit']}, {result['accesses_per_iteration']:.2f} accesses per iteration",
        ]
    lines += ["", "hit ratio (%) on the replayed stream", head]
    for row in rows:
        cells = "".join(f"{100 * row['policies'][c]['hit_ratio']:.2f}".rjust(width) for c in columns)
        lines.append(str(row["capacity"]).ljust(10) + cells)
    lines += ["", "bytes moved host->device (GB) on the replayed stream", head]
    for row in rows:
        cells = "".join(f"{row['policies'][c]['bytes_moved'] / 1e9:.1f}".rjust(width) for c in columns)
        lines.append(str(row["capacity"]).ljust(10) + cells)
    if memory_limited:
        loop_columns = list(rows[0]["closed_loop"]) if rows else []
        lines += [
            "",
            "hit ratio (%) with each policy serving in the loop (Belady sees only pending pre-gated work"
            + (", plus a same-expert guess for each running request that continues)" if result.get("lookahead_continuing")
               else ")"),
            "capacity".ljust(10) + "".join(c.rjust(width) for c in loop_columns),
        ]
        for row in rows:
            cells = "".join(f"{100 * row['closed_loop'][c]['hit_ratio']:.2f}".rjust(width) for c in loop_columns)
            lines.append(str(row["capacity"]).ljust(10) + cells)
        lines += ["", "bytes moved host->device (GB) with each policy serving in the loop",
                  "capacity".ljust(10) + "".join(c.rjust(width) for c in loop_columns)]
        for row in rows:
            cells = "".join(f"{row['closed_loop'][c]['bytes_moved'] / 1e9:.1f}".rjust(width) for c in loop_columns)
            lines.append(str(row["capacity"]).ljust(10) + cells)
        gap_columns = list(rows[0].get("gap_closed", {})) if rows else []
        if gap_columns:
            lines += ["", "share of the LRU -> offline-optimum hit-ratio gap closed in the loop (%)",
                      "capacity".ljust(10) + "".join(c.rjust(width) for c in gap_columns)]
            for row in rows:
                cells = "".join(f"{100 * row['gap_closed'][c]:.1f}".rjust(width) for c in gap_columns)
                lines.append(str(row["capacity"]).ljust(10) + cells)
        if rows and "loop_seconds" in rows[0]:
            lines += ["", "seconds per simulation in the loop (belady: the recording one)",
                      "capacity".ljust(10) + "".join(c.rjust(width) for c in loop_columns)]
            for row in rows:
                cells = "".join(f"{row['loop_seconds'][c]:.2f}".rjust(width) for c in loop_columns)
                lines.append(str(row["capacity"]).ljust(10) + cells)
    lines.append("")
    lines.append(f"(recording simulations took {result['record_simulation_s']:.2f} s)")
    return "\n".join(lines)


def format_sched_table(result: dict) -> str:
    """One row per (rate, policy): latency (ms), experts and tokens per batch, throughput, wall time."""
    has_cache = result["cache"] is not None
    header = (
        f"{'rate/s':>7} {'policy':<14} {'experts/b':>9} {'tok/b':>7} {'norm mean':>10} {'norm p95':>9} "
        f"{'ttft p95':>9} {'tpot mean':>9} {'tok/s':>8}" + (f" {'hit %':>6}" if has_cache else "")
        + f" {'growth':>6} {'sim s':>6} {'cpu s':>6}"
    )
    note = (
        "normalized latency, TTFT and TPOT in ms; growth: mean normalized latency of the last quarter of requests "
        "over the first (well above 1: overloaded); sim s / cpu s: wall-clock / CPU seconds of each simulation"
    )
    lines = [note, header]
    baseline = {}
    for run in result["runs"]:
        if run["policy"] == "decode-first":
            baseline[run["rate_per_s"]] = run
    for run in result["runs"]:
        rate = _rate_label(run["rate_per_s"], result.get("concurrency"))
        line = (
            f"{rate:>7} {run['policy']:<14} {run['unique_experts_per_batch']:>9.2f} {run['tokens_per_batch']:>7.1f} "
            f"{1e3 * run['normalized_latency_s']['mean']:>10.2f} {1e3 * run['normalized_latency_s']['p95']:>9.2f} "
            f"{1e3 * run['ttft_s']['p95']:>9.1f} {1e3 * run['tpot_s']['mean']:>9.2f} "
            f"{run['throughput_tokens_per_s']:>8.0f}"
        )
        if has_cache:
            line += f" {100 * run['cache']['hit_ratio']:>6.2f}"
        lines.append(
            line + f" {run['latency_growth']:>6.2f} {run['simulate_wall_s']:>6.2f} {run['simulate_cpu_s']:>6.2f}"
        )
    if baseline:
        lines += ["", "change against decode-first at the same rate (negative is better)"]
        lines.append(f"{'rate/s':>7} {'policy':<14} {'experts/b':>10} {'norm mean':>10} {'norm p95':>10}")
        for run in result["runs"]:
            base = baseline.get(run["rate_per_s"])
            if base is None or run["policy"] == "decode-first":
                continue
            rate = _rate_label(run["rate_per_s"], result.get("concurrency"))
            lines.append(
                f"{rate:>7} {run['policy']:<14} "
                f"{_change(run['unique_experts_per_batch'], base['unique_experts_per_batch']):>10} "
                f"{_change(run['normalized_latency_s']['mean'], base['normalized_latency_s']['mean']):>10} "
                f"{_change(run['normalized_latency_s']['p95'], base['normalized_latency_s']['p95']):>10}"
            )
    return "\n".join(lines)


def _rate_label(rate, concurrency) -> str:
    if concurrency is not None:
        return f"C={concurrency}"
    return "trace" if rate is None else f"{rate:g}"


def _change(value: float, base: float) -> str:
    return f"{100 * (value - base) / base:+.1f}%" if base else "n/a"
