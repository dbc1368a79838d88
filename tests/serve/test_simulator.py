"""Simulator: hand-computable timelines, every request served, determinism, cache and prefetch accounting."""

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve.sim.cost_model import CostModel, llama2_7b_a100
from serve.core.expert_cache import CacheConfig
from serve.core.metrics import describe, percentile, summarize
from serve.core.scheduler import POLICIES, SchedulerConfig
from serve.sim.simulate import SimConfig, simulate
from serve.core.types import RequestSpec, ServeError
from serve.sim.workload import WorkloadConfig, synthetic_workload

# One second per iteration, nothing else: times below are iteration counts.
UNIT_COST = CostModel(
    num_layers=2, step_overhead_s=1.0, token_s=0.0, expert_s=0.0, slice_bytes=10, link_bytes_per_s=10.0
)


def test_hand_computed_timeline():
    specs = [
        RequestSpec("a", 0.0, (0, 1), (0, 1, 1), 3),  # prefill + 2 decode steps
        RequestSpec("b", 10.0, (1,), (1,), 1),  # arrives while idle; prefill only
    ]
    result = simulate(specs, 2, SimConfig(SchedulerConfig("fcfs", 8, None), UNIT_COST))
    a, b = result.requests
    assert (a.first_token_s, a.finish_s) == (1.0, 3.0)
    assert (b.first_token_s, b.finish_s) == (11.0, 11.0)
    assert result.batch_start_s == [0.0, 1.0, 2.0, 10.0]
    # Prefill of "a" touches experts 0 and 1; its decode inputs are generated tokens 1 and 2 (experts 0, 1).
    assert result.batch_experts == [2, 1, 1, 1]
    summary = summarize(result)
    assert summary["ttft_s"]["mean"] == 1.0
    assert summary["tpot_s"]["mean"] == 1.0
    assert summary["normalized_latency_s"]["p50"] == 1.0
    assert summary["generated_tokens"] == 4 and summary["makespan_s"] == 11.0


def test_cost_model_layer_pipeline_by_hand():
    cost = CostModel(num_layers=2, step_overhead_s=2.0, token_s=0.0, expert_s=0.0, slice_bytes=3, link_bytes_per_s=1.0)
    # Two layers of 1 s each; one missing slice per layer takes 3 s to load.
    assert cost.step_s(1, 1, 0) == (2.0, 0.0)
    # Layer-ahead: load L0 [0,3], compute L0 [3,4]; load L1 starts at 3 (when L0 starts) -> [3,6]; L1 [6,7].
    assert cost.step_s(1, 1, 1, pipelined=True) == (7.0, 6.0)
    # On demand: load L0 [0,3], L0 [3,4], load L1 [4,7], L1 [7,8].
    assert cost.step_s(1, 1, 1, pipelined=False) == (8.0, 7.0)
    # Only layer 1 misses, and the link is busy until 2: load [2,5], L0 [0,1], L1 [5,6].
    assert cost.step_s(1, 1, [0, 1], pipelined=True, link_ready_s=2.0) == (6.0, 5.0)


def test_paper_cost_preset_matches_its_arithmetic():
    cost = llama2_7b_a100()
    assert cost.slice_bytes == 135_266_304
    assert cost.expert_s == pytest.approx(2.123e-3, rel=1e-3)
    assert cost.step_overhead_s == pytest.approx(2.363e-3, rel=1e-3)
    assert cost.token_s == pytest.approx(30.13e-6, rel=1e-3)
    assert cost.slice_transfer_s == pytest.approx(5.41e-3, rel=1e-3)


def _small_workload(seed, n=12, experts=3, rate=50.0):
    config = WorkloadConfig(
        num_requests=n, rate_per_s=rate, num_experts=experts, prompt_mean=6, prompt_max=12, output_mean=5,
        output_max=10, seed=seed,
    )  # fmt: skip
    return synthetic_workload(config)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 10_000),
    st.sampled_from(POLICIES),
    st.none() | st.tuples(st.integers(1, 3), st.sampled_from(["belady", "lru", "lfu", "fifo", "random"])),
    st.sampled_from(["expert", "slice"]),
    st.sampled_from(["none", "layer", "next"]),
)
def test_every_request_is_served_exactly(seed, policy, cache, unit, prefetch):
    specs = _small_workload(seed)
    cache_config = None
    if cache is not None:
        cache_config = CacheConfig(3, 2, cache[0], unit, cache[1], seed=seed)
    result = simulate(specs, 3, SimConfig(SchedulerConfig(policy, 16, 4), UNIT_COST, cache_config, prefetch))
    for request in result.requests:
        assert request.generated == request.spec.num_output_tokens
        assert request.spec.arrival_s <= request.first_token_s <= request.finish_s
    # Each prompt token runs once, and each generated token but the last runs once as a decode input.
    expected = sum(s.prompt_len + s.num_output_tokens - 1 for s in specs)
    assert sum(result.batch_tokens) == expected
    starts = result.batch_start_s
    assert all(s + d <= t + 1e-12 for s, d, t in zip(starts, result.batch_duration_s, starts[1:]))
    if cache_config is not None:
        c = result.cache
        assert c.hits + c.misses == c.accesses
        layers = 2 if unit == "slice" else 1
        assert c.accesses == layers * sum(result.batch_experts)
        assert c.loads == c.misses + c.prefetches
        assert c.prefetch_used + c.prefetch_wasted <= c.prefetches
        assert prefetch == "next" or c.prefetches == 0


def test_simulation_is_deterministic():
    specs = _small_workload(3, n=40)
    config = SimConfig(SchedulerConfig("expert-aware", 16, 8), UNIT_COST, CacheConfig(3, 2, 2, "expert", "random", 5))
    first = summarize(simulate(specs, 3, config))
    second = summarize(simulate(_small_workload(3, n=40), 3, config))
    assert first == second


def test_expert_aware_batches_touch_fewer_experts_under_load():
    specs = _small_workload(1, n=80, experts=4, rate=400.0)
    runs = {
        policy: summarize(simulate(specs, 4, SimConfig(SchedulerConfig(policy, 12, 16), UNIT_COST)))
        for policy in ("expert-aware", "fcfs")
    }
    assert runs["expert-aware"]["unique_experts_per_batch"] < runs["fcfs"]["unique_experts_per_batch"]


def test_a_full_cache_only_misses_cold():
    specs = _small_workload(2, n=30)
    result = simulate(specs, 3, SimConfig(SchedulerConfig("fcfs", 16, None), UNIT_COST, CacheConfig(3, 2, 3)))
    used = {e for s in specs for e in s.prompt_experts + s.output_experts[:-1]}
    assert result.cache.misses == len(used) and result.cache.evictions == 0


def test_misses_cost_transfer_time():
    specs = [RequestSpec("a", 0.0, (0,), (0,), 1)]
    cold = simulate(specs, 2, SimConfig(SchedulerConfig(), UNIT_COST, CacheConfig(2, 2, 1)))
    # One whole-expert miss: two slices of 1 s each, layer-ahead: load [0,1], L0 [1,1.5], load L1 [1,2], L1 [2,2.5].
    assert cold.batch_duration_s == [2.5]


@pytest.mark.parametrize(
    "specs, config, message",
    [
        ([RequestSpec("a", 0.0, (0, 5), (0,), 1)], SimConfig(SchedulerConfig(), UNIT_COST), "expert id 5 out of range"),
        (
            [RequestSpec("a", 1.0, (0,), (0,), 1), RequestSpec("b", 0.5, (0,), (0,), 1)],
            SimConfig(SchedulerConfig(), UNIT_COST),
            "requests must be in arrival order",
        ),
        (
            [RequestSpec("a", 0.0, (0,), (0,), 1), RequestSpec("a", 0.5, (0,), (0,), 1)],
            SimConfig(SchedulerConfig(), UNIT_COST),
            "duplicate request id 'a'",
        ),
    ],
)
def test_simulate_rejects_bad_workloads(specs, config, message):
    with pytest.raises(ServeError, match=message):
        simulate(specs, 2, config)


def test_sim_config_rejects_mismatched_layers_and_bad_modes():
    with pytest.raises(ServeError, match="num_layers=3 differs"):
        SimConfig(SchedulerConfig(), UNIT_COST, CacheConfig(2, 3, 1))
    with pytest.raises(ServeError, match="unknown prefetch mode 'eager'"):
        SimConfig(SchedulerConfig(), UNIT_COST, None, "eager")
    with pytest.raises(ServeError, match="link_bytes_per_s=0"):
        dataclasses.replace(UNIT_COST, link_bytes_per_s=0)


def test_percentiles_match_linear_interpolation():
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 95) == pytest.approx(3.85)
    assert describe([])["mean"] != describe([])["mean"]  # NaN when empty
    assert math.isclose(describe(values)["mean"], 2.5)


def test_latency_growth_flags_a_growing_queue():
    from serve.core.metrics import latency_growth

    assert latency_growth([1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]) == 4.0  # last quarter 4+4 over first 1+1
    assert math.isnan(latency_growth([1.0, 2.0, 3.0]))
    specs = _small_workload(4, n=200, experts=3, rate=3.0)  # about 3x what 1 s iterations can serve
    overloaded = summarize(simulate(specs, 3, SimConfig(SchedulerConfig("decode-first", 12, None), UNIT_COST)))
    relaxed = [dataclasses.replace(s, arrival_s=100.0 * i) for i, s in enumerate(specs)]  # one at a time
    idle = summarize(simulate(relaxed, 3, SimConfig(SchedulerConfig("decode-first", 12, None), UNIT_COST)))
    assert overloaded["latency_growth"] > 2.0 and idle["latency_growth"] == pytest.approx(1.0, abs=0.5)


def test_memory_limited_cache_bench_replays_the_streams_of_a_server_with_that_cache():
    from serve.sim.bench import run_cache_bench

    specs = _small_workload(5, n=60, experts=4, rate=50.0)
    scheduler = SchedulerConfig("expert-aware", 12, 16)
    result = run_cache_bench(specs, 4, scheduler, UNIT_COST, [1, 2], ("lru", "belady"), regime="memory-limited")
    for row in result["rows"]:
        cache = CacheConfig(4, 2, row["capacity"], "expert", "belady")
        server = simulate(specs, 4, SimConfig(scheduler, UNIT_COST, cache, "layer"))
        # The replayed stream is the one this server scheduled, and its in-loop counters are the server's.
        assert row["iterations"] == server.num_iterations
        assert row["closed_loop"]["belady"] == server.cache.as_dict()
        lru = simulate(specs, 4, SimConfig(scheduler, UNIT_COST, dataclasses.replace(cache, policy="lru"), "layer"))
        assert row["closed_loop"]["lru"] == lru.cache.as_dict()
        # Replaying the server's own stream with pre-gated Belady makes the same decisions as the server did,
        # except where the server's projected service order differs from the order that actually happened.
        assert 0.0 <= row["policies"]["belady"]["hit_ratio"] <= 1.0
    resident = run_cache_bench(specs, 4, scheduler, UNIT_COST, [1, 2], ("lru",))
    assert resident["rows"][0]["iterations"] == resident["rows"][1]["iterations"]  # one stream for every capacity
    with pytest.raises(ServeError, match="unknown regime 'tiny'"):
        run_cache_bench(specs, 4, scheduler, UNIT_COST, [1], ("lru",), regime="tiny")
