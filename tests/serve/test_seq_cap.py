"""The sequence cap ``SchedulerConfig.max_batch_requests``: every batch holds at most that many work items, no item
is lost or duplicated, Algorithm 1 takes whole largest queues under both limits, the projected next batch is the
one the scheduler forms, and no cap is exactly the behaviour before the cap existed."""

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from readme_jax.cli import main
from serve.sim.cost_model import llama2_7b_a100
from serve.core.expert_cache import CacheConfig
from serve.core.prefetch import predict_next_experts
from serve.core.scheduler import POLICIES, Scheduler, SchedulerConfig
from serve.sim.simulate import SimConfig, simulate
from serve.core.types import RequestState, ServeError
from serve.sim.workload import WorkloadConfig, synthetic_workload
from tests.serve.test_batching import _decoding, _queued, pending_items


def _ids(requests) -> list[str]:
    return [r.spec.request_id for r in requests]


@settings(max_examples=80, deadline=None)
@given(
    pending_items(),
    st.sampled_from(POLICIES),
    st.integers(6, 20),
    st.none() | st.integers(0, 3),
    st.integers(1, 8),
    st.integers(0, 4),
)
def test_batches_respect_cap_and_budget_and_keep_every_item(pending, policy, budget, bound, cap, arrivals):
    num_experts, items = pending
    scheduler = Scheduler(SchedulerConfig(policy, budget, bound, cap), num_experts)
    # Items arrive over the first iterations, so the starvation step sees items of different ages.
    waves = [items[i::arrivals + 1] for i in range(arrivals + 1)]
    served = []
    for iteration in range(10 * len(items) + len(waves) + 1):
        if iteration < len(waves):
            for item in waves[iteration]:
                scheduler.submit(item, iteration)
        batch = scheduler.next_batch(iteration)
        assert len(batch.requests) <= cap
        assert batch.num_tokens == sum(r.work_tokens for r in batch.requests) <= budget
        assert batch.num_forced <= len(batch.requests)
        if len(scheduler):
            assert batch.requests, "an iteration with pending work formed an empty batch"
        served.extend(batch.requests)
        if iteration >= len(waves) and not len(scheduler):
            break
    assert len(scheduler) == 0 and scheduler.pending_tokens == 0
    assert sorted(r.index for r in served) == sorted(r.index for r in items)  # each item once


@settings(max_examples=60, deadline=None)
@given(pending_items(), st.sampled_from(POLICIES), st.integers(6, 20), st.none() | st.integers(0, 3))
def test_a_cap_at_least_the_number_of_items_changes_nothing(pending, policy, budget, bound):
    num_experts, items = pending

    def batches(cap):
        scheduler = Scheduler(SchedulerConfig(policy, budget, bound, cap), num_experts)
        for item in items:
            item.state = RequestState.QUEUED if item.spec.request_id.startswith("p") else RequestState.DECODE
            scheduler.submit(item, 0)
        out = []
        for iteration in range(len(items) + 1):
            out.append(_ids(scheduler.next_batch(iteration).requests))
        return out

    assert batches(None) == batches(max(1, len(items))) == batches(len(items) + 7)


def _workload(num_requests=150):
    return synthetic_workload(WorkloadConfig(num_requests=num_requests, rate_per_s=40, num_experts=7, seed=5))


def _run(policy, cap, specs=None):
    cost = llama2_7b_a100()
    cache = CacheConfig(7, cost.num_layers, 3, "expert", "belady", 0, 1024)
    config = SimConfig(SchedulerConfig(policy, 256, 8, cap), cost, cache, "next")
    return simulate(_workload() if specs is None else specs, 7, config)


def test_no_cap_is_the_behaviour_before_the_cap_existed():
    # Hash recorded with the scheduler, prefetch planner and simulator of the commit before the cap was added.
    digest = hashlib.sha256()
    for policy in POLICIES:
        result = _run(policy, None)
        record = [result.batch_tokens, result.batch_experts, result.batch_prefill, result.cache.hits]
        digest.update(json.dumps(record).encode())
    assert digest.hexdigest() == "9515664c94a899378ccde0653973962f896dc527d4628ea5a6a4ba6d2d2d82b2"


@pytest.mark.parametrize("policy", POLICIES)
def test_simulation_with_a_cap_serves_every_request_and_a_huge_cap_changes_nothing(policy):
    specs = _workload(50)
    capped = _run(policy, 3, specs)
    assert all(r.state is RequestState.FINISHED and r.generated == r.num_output for r in capped.requests)
    assert sum(capped.batch_tokens) == sum(s.prompt_len + s.num_output_tokens - 1 for s in specs)
    free, huge = _run(policy, None, specs), _run(policy, len(specs), specs)
    assert huge.batch_experts == free.batch_experts and huge.batch_tokens == free.batch_tokens
    assert huge.cache.hits == free.cache.hits


def _expert_queues(sizes: dict, scheduler: Scheduler) -> None:
    index = 0
    for expert, size in sizes.items():
        for _ in range(size):
            scheduler.submit(_decoding(index, expert), 0)
            index += 1


def test_algorithm_1_with_a_cap_takes_whole_largest_queues_then_a_prefix_and_stops():
    sizes = {0: 2, 1: 5, 2: 3, 3: 4}
    scheduler = Scheduler(SchedulerConfig("expert-aware", 100, None, 9), 4)
    _expert_queues(sizes, scheduler)
    batch = scheduler.next_batch(0)
    # Queue 1 (5 items) fits the 9 slots whole; queue 3 (4 items) fits the 4 slots left whole.
    assert [r.queue_expert for r in batch.requests] == [1] * 5 + [3] * 4 and batch.experts == (1, 3)
    assert [r.queue_expert for r in scheduler.next_batch(1).requests] == [2] * 3 + [0] * 2

    scheduler = Scheduler(SchedulerConfig("expert-aware", 100, None, 7), 4)
    _expert_queues(sizes, scheduler)
    batch = scheduler.next_batch(0)
    # Queue 1 whole (5 slots), then queue 3 (4 items) does not fit the 2 slots left: its FIFO prefix of 2, stop;
    # queue 2 and queue 0 are not touched although they have tokens within the budget.
    assert [r.queue_expert for r in batch.requests] == [1] * 5 + [3] * 2 and batch.experts == (1, 3)
    assert _ids(batch.requests) == ["d2", "d3", "d4", "d5", "d6", "d10", "d11"]


def test_algorithm_1_the_token_budget_still_binds_under_a_loose_cap():
    scheduler = Scheduler(SchedulerConfig("expert-aware", 6, None, 50), 4)
    _expert_queues({0: 2, 1: 5, 2: 3, 3: 4}, scheduler)
    batch = scheduler.next_batch(0)
    assert [r.queue_expert for r in batch.requests] == [1] * 5 + [3]  # 5 + prefix of 1 token, then stop


def test_starvation_step_respects_the_cap():
    scheduler = Scheduler(SchedulerConfig("expert-aware", 100, 0, 2), 3)
    for index in range(5):
        scheduler.submit(_decoding(index, index % 3), 0)
    batch = scheduler.next_batch(0)
    assert _ids(batch.requests) == ["d0", "d1"] and batch.num_forced == 2  # oldest first, then no slot left


@pytest.mark.parametrize("policy", ["expert-aware", "decode-first", "fcfs"])
def test_projected_next_batch_is_the_batch_formed_when_the_cap_binds(policy):
    scheduler = Scheduler(SchedulerConfig(policy, 256, None, 4), 4)
    _expert_queues({0: 2, 1: 5, 2: 3, 3: 4}, scheduler)
    scheduler.submit(_queued(99, [2, 2, 0]), 0)
    projected = scheduler.project_next_batch()
    predicted = predict_next_experts(scheduler.service_order(), 256, 4)
    without_cap = predict_next_experts(scheduler.service_order(), 256)
    batch = scheduler.next_batch(0)
    assert len(batch.requests) == 4  # the cap binds, not the budget
    assert _ids(projected) == _ids(batch.requests)
    assert sorted(predicted) == list(batch.experts)
    assert len(without_cap) > len(predicted)  # the budget alone would predict experts the batch never touches


def test_projection_counts_overdue_items_against_the_cap():
    scheduler = Scheduler(SchedulerConfig("expert-aware", 256, 1, 2), 3)
    scheduler.submit(_decoding(0, 0), 0)  # alone in queue 0
    for index in range(1, 5):
        scheduler.submit(_decoding(index, 2), 0)
    assert _ids(scheduler.next_batch(0).requests) == ["d1", "d2"]  # prefix of the largest queue, cap 2
    for index in range(5, 8):
        scheduler.submit(_decoding(index, 2), 1)
    # At iteration 1, d0, d3 and d4 are overdue: the oldest two take both slots; Algorithm 1 alone would take d3, d4.
    projected = scheduler.project_next_batch()
    predicted = predict_next_experts(scheduler.service_order(), 256, 2)
    batch = scheduler.next_batch(1)
    assert _ids(batch.requests) == ["d0", "d3"] and batch.num_forced == 2
    assert _ids(projected) == _ids(batch.requests) and predicted == [0, 2]


@pytest.mark.parametrize("value", [0, -3, 2.5, "8", True])
def test_bad_caps_raise_naming_the_value(value):
    with pytest.raises(ServeError, match=f"max_batch_requests={value!r}"):
        SchedulerConfig(max_batch_requests=value)


def test_cli_passes_and_prints_the_cap(capsys):
    argv = ["bench-sched", "--no-plot", "--rates", "8", "--requests", "10", "--policies", "expert-aware,fcfs"]
    assert main([*argv, "--max-batch-requests", "4"]) == 0
    assert "max_batch_requests=4" in capsys.readouterr().out
    assert main([*argv, "--json", "--max-batch-requests", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["max_batch_requests"] == 4
    assert main(["bench-cache", "--no-plot", "--json", "--requests", "10", "--capacities", "2", "--policies", "lru,belady",
                 "--max-batch-requests", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["max_batch_requests"] == 5
    assert main([*argv, "--max-batch-requests", "0"]) == 2
    assert "max_batch_requests=0" in capsys.readouterr().err
