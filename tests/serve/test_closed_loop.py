"""Closed-loop clients (``SimConfig.concurrency``): at most C requests in flight, every request served once, issued
in trace order (the first C at t = 0, each later one at a completion), C >= the request count issues all at
t = 0, and ``concurrency=None`` is exactly the open-loop simulator that existed before the option."""

import dataclasses
import hashlib
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from readme_jax.cli import main
from serve.sim.cost_model import llama2_7b_a100
from serve.core.expert_cache import CacheConfig
from serve.core.metrics import summarize
from serve.core.scheduler import POLICIES, SchedulerConfig
from serve.sim.simulate import SimConfig, simulate
from serve.core.types import RequestState, ServeError
from serve.sim.workload import WorkloadConfig, synthetic_workload


def _workload(n=40, seed=0, experts=4, rate=40.0):
    config = WorkloadConfig(
        num_requests=n, rate_per_s=rate, num_experts=experts, prompt_mean=6, prompt_max=12, output_mean=5,
        output_max=10, seed=seed,
    )  # fmt: skip
    return synthetic_workload(config)


def _config(policy="expert-aware", concurrency=None, cache=None, cap=None, think_s=0.0, experts=4):
    cost = dataclasses.replace(llama2_7b_a100(), num_layers=2)
    cache_config = None if cache is None else CacheConfig(experts, 2, cache)
    scheduler = SchedulerConfig(policy, 16, 4, cap)
    return SimConfig(scheduler, cost, cache_config, "layer", concurrency=concurrency, think_s=think_s)


def _max_in_flight(requests) -> int:
    """Most requests in flight at once; a request is in flight on [issue, finish)."""
    events = []
    for request in requests:
        events.append((request.spec.arrival_s, 1))
        events.append((request.finish_s, -1))
    events.sort(key=lambda e: (e[0], e[1]))  # at equal times a finish frees its slot before an issue takes it
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 1000),
    st.sampled_from(POLICIES),
    st.integers(1, 12),
    st.none() | st.integers(1, 3),
    st.none() | st.integers(1, 4),
    st.sampled_from([0.0, 0.05]),
)
def test_closed_loop_bounds_in_flight_serves_each_once_in_trace_order(seed, policy, clients, cache, cap, think):
    specs = _workload(30, seed)
    result = simulate(specs, 4, _config(policy, clients, cache, cap, think))
    requests = result.requests
    assert all(r.state is RequestState.FINISHED and r.generated == r.num_output for r in requests)
    assert [r.spec.request_id for r in requests] == [s.request_id for s in specs]  # each request exactly once
    assert sum(result.batch_tokens) == sum(s.prompt_len + s.num_output_tokens - 1 for s in specs)
    assert _max_in_flight(requests) <= clients
    issue = [r.spec.arrival_s for r in requests]
    assert issue == sorted(issue)  # issued in trace order
    assert issue[: min(clients, len(specs))] == [0.0] * min(clients, len(specs))
    finishes = sorted(r.finish_s for r in requests)
    for k, request in enumerate(requests[clients:]):
        # The (k+1)-th completion issues request C + k, after the think time.
        assert request.spec.arrival_s == pytest.approx(finishes[k] + think)
        assert request.first_token_s > request.spec.arrival_s
    # The input specs keep their recorded arrivals.
    assert [s.arrival_s for s in specs] == [s.arrival_s for s in _workload(30, seed)]


def test_enough_clients_issue_everything_at_time_zero():
    specs = _workload(25)
    for clients in (25, 26, 1000):
        result = simulate(specs, 4, _config(concurrency=clients))
        assert all(r.spec.arrival_s == 0.0 for r in result.requests)
    shifted = [dataclasses.replace(s, arrival_s=0.0) for s in specs]
    open_at_zero = summarize(simulate(shifted, 4, _config()))
    closed = summarize(simulate(specs, 4, _config(concurrency=25)))
    assert closed == open_at_zero


def test_one_client_serves_one_request_at_a_time():
    result = simulate(_workload(10), 4, _config(concurrency=1))
    for before, after in zip(result.requests, result.requests[1:]):
        assert after.spec.arrival_s == before.finish_s
    assert max(result.batch_prefill) == 1  # one request at a time: at most one prefill per batch


def _digest(concurrency_field: bool) -> str:
    digest = hashlib.sha256()
    for policy in POLICIES:
        for cache, cap in ((None, None), (2, None), (2, 3)):
            specs = _workload(60, seed=7)
            config = _config(policy, cache=cache, cap=cap)
            if not concurrency_field:
                config = dataclasses.replace(config, concurrency=None)
            summary = summarize(simulate(specs, 4, config))
            digest.update(json.dumps(summary, sort_keys=True, default=repr).encode())
    return digest.hexdigest()


def test_open_loop_is_the_simulator_before_closed_loop_existed():
    # Digest of the metrics dicts recorded with serve/sim/simulate.py of the commit before the option was added.
    assert _digest(True) == _digest(False) == "442930d95bfda9fd3de6d82554ca2d5e267fe6398724891bbb6576e0636ac52c"


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "8", math.nan])
def test_bad_concurrency_raises_naming_the_value(value):
    with pytest.raises(ServeError, match=f"concurrency={value!r}"):
        _config(concurrency=value)


@pytest.mark.parametrize("value", [-1.0, math.inf])
def test_bad_think_time_raises(value):
    with pytest.raises(ServeError, match="think_s"):
        _config(concurrency=2, think_s=value)
    with pytest.raises(ServeError, match="think_s"):
        _config(think_s=0.5)  # open loop has no think time


def test_cli_closed_loop_header_json_and_flag_checks(capsys):
    common = ["--requests", "30", "--prompt-max", "32", "--no-plot", "--max-batch-requests", "4"]
    assert main(["bench-sched", "--concurrency", "6", "--policies", "expert-aware,decode-first", *common]) == 0
    out = capsys.readouterr().out
    assert "closed loop, concurrency=6" in out and "C=6" in out
    assert main(["bench-sched", "--concurrency", "6", "--policies", "expert-aware", "--json", *common]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["concurrency"] == 6 and len(result["runs"]) == 1
    assert result["runs"][0]["latency_growth"] > 0
    args = ["bench-cache", "--concurrency", "6", "--regime", "memory-limited", "--capacities", "2", "--json"]
    assert main([*args, "--policies", "lru,belady", *common]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["concurrency"] == 6 and "closed_loop" in result["rows"][0]
    assert main(["bench-sched", *common]) == 0
    assert "open loop" in capsys.readouterr().out
    for bad, message in (
        (["bench-sched", "--concurrency", "4", "--rates", "3"], "--rates"),
        (["bench-cache", "--concurrency", "4", "--rate", "3"], "--rate"),
        (["bench-sched", "--concurrency", "4", "--arrival-cv", "2"], "--arrival-cv"),
        (["bench-sched", "--concurrency", "0"], "concurrency=0"),
    ):
        assert main([*bad, *common]) == 2
        assert message in capsys.readouterr().err
