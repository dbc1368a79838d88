"""Cache-aware expert-aware batching (``SchedulerConfig.prefer_resident``): a resident expert's queue counts as
(1 + w) times its tokens. It changes which queue Algorithm 1 takes, never what a batch may hold; w = 0 is the
paper's rule, and the projected next batch (the lookahead) stays the batch the scheduler forms."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve.core.expert_cache import CacheConfig
from serve.core.scheduler import Scheduler, SchedulerConfig
from serve.core.types import ServeError
from serve.sim.cost_model import llama2_7b_a100
from serve.sim.simulate import SimConfig, simulate
from serve.sim.workload import WorkloadConfig, synthetic_workload
from tests.serve.test_batching import _decoding, pending_items


def _queues(sizes: dict, scheduler) -> None:
    index = 0
    for expert, size in sizes.items():
        for _ in range(size):
            scheduler.submit(_decoding(index, expert), 0)
            index += 1


@pytest.mark.parametrize("weight,expected", [(0.0, 0), (0.5, 0), (1.0, 1), (3.0, 1)])
def test_a_resident_queue_wins_once_it_is_large_enough(weight, expected):
    """Queue 0 holds 5 tokens (not resident), queue 1 holds 3 (resident): 3 (1 + w) > 5 from w = 2/3 on."""
    resident = {1}
    scheduler = Scheduler(SchedulerConfig("expert-aware", 256, None, max_batch_experts=1, prefer_resident=weight),
                          3, resident=resident)
    _queues({0: 5, 1: 3}, scheduler)
    batch = scheduler.next_batch(0)
    assert batch.experts == (expected,)
    assert len(batch.requests) == (5 if expected == 0 else 3)


def test_the_scheduler_reads_the_live_resident_set():
    resident = set()
    scheduler = Scheduler(SchedulerConfig("expert-aware", 256, None, max_batch_experts=1, prefer_resident=1.0),
                          2, resident=resident)
    _queues({0: 3, 1: 2}, scheduler)
    resident.add(1)  # the cache loaded expert 1 after the scheduler was built
    assert scheduler.next_batch(0).experts == (1,)


@settings(max_examples=60, deadline=None)
@given(pending_items(), st.integers(6, 20), st.none() | st.integers(1, 4), st.sampled_from([0.5, 1.0, 4.0]),
       st.data())
def test_the_projected_next_batch_is_the_batch_formed(pending, budget, cap, weight, data):
    """With nothing overdue, ``project_next_batch`` (what prefetch and Belady look at) is ``next_batch``."""
    num_experts, items = pending
    resident = set(data.draw(st.lists(st.integers(0, num_experts - 1), max_size=num_experts)))
    scheduler = Scheduler(SchedulerConfig("expert-aware", budget, None, max_batch_requests=cap,
                                          prefer_resident=weight), num_experts, resident=resident)
    for request in items:
        if request.work_tokens <= budget:
            scheduler.submit(request, 0)
    projected = [r.spec.request_id for r in scheduler.project_next_batch()]
    assert projected == [r.spec.request_id for r in scheduler.next_batch(0).requests]


def _run(weight: float, capacity: int = 2):
    specs = synthetic_workload(WorkloadConfig(num_requests=60, num_experts=6, output_mean=8.0, output_max=16,
                                              prompt_max=120, seed=5))
    cost = llama2_7b_a100()
    cache = CacheConfig(num_experts=6, num_layers=cost.num_layers, capacity=capacity, policy="belady")
    config = SimConfig(SchedulerConfig("expert-aware", 64, 16, max_batch_requests=8, max_batch_experts=capacity,
                                       prefer_resident=weight), cost, cache, prefetch="next", protect_batch=True,
                       concurrency=8)
    return simulate(specs, 6, config)


def test_in_the_simulator_it_loads_fewer_experts_and_keeps_every_limit():
    base, aware = _run(0.0), _run(1.0)
    assert aware.cache.loads < base.cache.loads  # the point of it
    for result in (base, aware):
        assert max(result.batch_experts) <= 2
        assert all(r.finish_s is not None and r.generated == r.num_output for r in result.requests)
        assert max(r.max_wait for r in result.requests) <= 16 + 1  # the starvation bound still holds


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf"), "1", True])
def test_bad_weights_raise_naming_the_value(weight):
    with pytest.raises(ServeError, match="prefer_resident="):
        SchedulerConfig(prefer_resident=weight)


def test_other_policies_and_missing_resident_sets_are_refused():
    with pytest.raises(ServeError, match="expert-aware batching only"):
        SchedulerConfig("decode-first", prefer_resident=1.0)
    with pytest.raises(ServeError, match="resident set"):
        Scheduler(SchedulerConfig(prefer_resident=1.0), 3)
    config = SimConfig(SchedulerConfig(prefer_resident=1.0), llama2_7b_a100(),
                       CacheConfig(num_experts=2, num_layers=32, capacity=8, unit="slice"))
    with pytest.raises(ServeError, match="expert-unit cache"):
        simulate(synthetic_workload(WorkloadConfig(num_requests=2, num_experts=2)), 2, config)
