"""Serving metrics from a simulation record.

Per request (times in seconds; M = generated tokens):
- TTFT: first token time - arrival.
- TPOT: (finish - first token) / (M - 1), for requests with M > 1.
- end-to-end latency: finish - arrival.
- normalized latency: end-to-end latency / M (the paper's primary metric, section 6.6).

Each is reported as mean, p50, p95 and p99 (linear interpolation between order statistics). Per iteration: the
mean number of distinct experts and tokens per batch. Throughput: generated tokens (and requests) per second over
the makespan, from the first arrival to the last finish.

Overload check: ``latency_growth`` = mean normalized latency of the last quarter of requests (in arrival order)
over that of the first quarter. Near 1 the server keeps up; well above 1 the queue grows during the run, so every
latency percentile depends on how long the trace is and comparing them across policies says little. It is a
heuristic: a policy that lets new prefills overtake running decodes spreads an overload over early requests too,
so its growth rises less than its latencies do.
"""

import math


def percentile(values, q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation, as numpy's default method."""
    if not values:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q={q} must lie in [0, 100]")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def describe(values) -> dict:
    """mean, p50, p95, p99 of a list of numbers (NaN when empty)."""
    if not values:
        return {"mean": math.nan, "p50": math.nan, "p95": math.nan, "p99": math.nan}
    ordered = sorted(values)
    return {
        "mean": math.fsum(ordered) / len(ordered),
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
    }


def latency_growth(normalized_in_arrival_order) -> float:
    """Mean of the last quarter over the mean of the first quarter (NaN below 4 requests)."""
    quarter = len(normalized_in_arrival_order) // 4
    if quarter == 0:
        return math.nan
    first = math.fsum(normalized_in_arrival_order[:quarter])
    last = math.fsum(normalized_in_arrival_order[-quarter:])
    return last / first if first > 0 else math.nan


def summarize(result) -> dict:
    """One flat-ish dict of every metric of a run (JSON-serializable).

    ``result`` is a ``serve.sim.simulate.SimResult`` or any record of the same shape (the real engine's).
    """
    ttft, tpot, e2e, normalized = [], [], [], []  # in workload (arrival) order
    generated = 0
    max_wait = 0
    for request in result.requests:
        arrival = request.spec.arrival_s
        tokens = request.spec.num_output_tokens
        generated += tokens
        ttft.append(request.first_token_s - arrival)
        latency = request.finish_s - arrival
        e2e.append(latency)
        normalized.append(latency / tokens)
        if tokens > 1:
            tpot.append((request.finish_s - request.first_token_s) / (tokens - 1))
        max_wait = max(max_wait, request.max_wait)
    iterations = result.num_iterations
    first_arrival = min((r.spec.arrival_s for r in result.requests), default=0.0)
    last_finish = max((r.finish_s for r in result.requests), default=0.0)
    makespan = last_finish - first_arrival
    summary = {
        "requests": len(result.requests),
        "generated_tokens": generated,
        "iterations": iterations,
        "makespan_s": makespan,
        "throughput_tokens_per_s": generated / makespan if makespan > 0 else math.nan,
        "throughput_requests_per_s": len(result.requests) / makespan if makespan > 0 else math.nan,
        "unique_experts_per_batch": sum(result.batch_experts) / iterations if iterations else math.nan,
        "tokens_per_batch": sum(result.batch_tokens) / iterations if iterations else math.nan,
        "max_wait_iterations": max_wait,
        "ttft_s": describe(ttft),
        "tpot_s": describe(tpot),
        "e2e_latency_s": describe(e2e),
        "normalized_latency_s": describe(normalized),
        "latency_growth": latency_growth(normalized),
    }
    if result.cache is not None:
        summary["cache"] = result.cache.as_dict()
    return summary
