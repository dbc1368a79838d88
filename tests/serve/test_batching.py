"""Batching policies: Algorithm 1 (fixed) takes the largest expert queues within the budget; every policy keeps
every item exactly once; the starvation bound holds."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve.core.scheduler import POLICIES, Scheduler, SchedulerConfig
from serve.core.types import Request, RequestSpec, RequestState, ServeError


def _decoding(index: int, expert: int) -> Request:
    """A request in DECODE whose pending item is one token of ``expert``."""
    request = Request(RequestSpec(f"d{index}", 0.0, (expert,), (expert, expert), 2), index)
    request.state = RequestState.DECODE
    request.generated = 1
    request.reveal_next_expert()
    return request


def _queued(index: int, prompt_experts) -> Request:
    return Request(RequestSpec(f"p{index}", 0.0, tuple(prompt_experts), (0,), 1), index)


def test_algorithm_1_takes_largest_queues_whole_then_fills_and_stops():
    scheduler = Scheduler(SchedulerConfig("expert-aware", max_batch_tokens=9, max_wait_iterations=None), 4)
    sizes = {0: 2, 1: 5, 2: 3, 3: 4}  # tokens queued per expert
    index = 0
    for expert, size in sizes.items():
        for _ in range(size):
            scheduler.submit(_decoding(index, expert), 0)
            index += 1
    batch = scheduler.next_batch(0)
    # Queue 1 (5 tokens) fits whole, leaving 4; queue 3 (4 tokens) fits whole; the budget is spent.
    assert [r.queue_expert for r in batch.requests] == [1] * 5 + [3] * 4
    assert batch.experts == (1, 3) and batch.num_tokens == 9
    batch = scheduler.next_batch(1)
    # Queue 2 (3) whole, then queue 0 (2) whole: 5 tokens, everything left.
    assert batch.experts == (0, 2) and len(scheduler) == 0
    assert scheduler.next_batch(2).requests == ()  # empty queues end the loop (no infinite loop)


def test_algorithm_1_partial_fill_from_the_largest_queue_that_does_not_fit():
    scheduler = Scheduler(SchedulerConfig("expert-aware", max_batch_tokens=4, max_wait_iterations=None), 3)
    for index in range(6):
        scheduler.submit(_decoding(index, 2), 0)
    scheduler.submit(_decoding(6, 0), 0)
    batch = scheduler.next_batch(0)
    assert [r.spec.request_id for r in batch.requests] == ["d0", "d1", "d2", "d3"]  # FIFO prefix of queue 2
    assert batch.experts == (2,)


def test_a_prefill_sits_in_its_most_frequent_expert_queue_and_touches_all_its_experts():
    scheduler = Scheduler(SchedulerConfig("expert-aware", 8, None), 4)
    scheduler.submit(_queued(0, [3, 1, 1, 2, 1]), 0)
    batch = scheduler.next_batch(0)
    assert batch.requests[0].queue_expert == 1
    assert batch.experts == (1, 2, 3) and batch.num_prefill == 1 and batch.num_tokens == 5


def test_phase_policies_order_their_queues():
    def first_batch(policy):
        scheduler = Scheduler(SchedulerConfig(policy, 3, None), 2)
        scheduler.submit(_queued(0, [0, 0]), 0)
        scheduler.submit(_decoding(1, 1), 0)
        scheduler.submit(_decoding(2, 1), 0)
        return [r.spec.request_id for r in scheduler.next_batch(0).requests]

    assert first_batch("decode-first") == ["d1", "d2"]  # the 2-token prompt no longer fits
    assert first_batch("prefill-first") == ["p0", "d1"]
    assert first_batch("fcfs") == ["p0", "d1"]


@st.composite
def pending_items(draw):
    num_experts = draw(st.integers(1, 5))
    items = []
    for index in range(draw(st.integers(0, 30))):
        if draw(st.booleans()):
            items.append(_decoding(index, draw(st.integers(0, num_experts - 1))))
        else:
            prompt = draw(st.lists(st.integers(0, num_experts - 1), min_size=1, max_size=6))
            items.append(_queued(index, prompt))
    return num_experts, items


@settings(max_examples=80, deadline=None)
@given(pending_items(), st.sampled_from(POLICIES), st.integers(6, 20), st.none() | st.integers(0, 3))
def test_batches_respect_the_budget_and_never_lose_or_duplicate_an_item(pending, policy, budget, bound):
    num_experts, items = pending
    scheduler = Scheduler(SchedulerConfig(policy, budget, bound), num_experts)
    for item in items:
        scheduler.submit(item, 0)
    served = []
    for iteration in range(len(items) + 1):
        batch = scheduler.next_batch(iteration)
        assert batch.num_tokens == sum(r.work_tokens for r in batch.requests) <= budget
        assert set(batch.experts) == {e for r in batch.requests for e in r.work_experts}
        served.extend(batch.requests)
        if not len(scheduler):
            break
    assert len(scheduler) == 0 and scheduler.pending_tokens == 0
    assert sorted(r.index for r in served) == sorted(r.index for r in items)


def test_starvation_bound_serves_a_rare_expert_in_time():
    def wait_of_rare_request(bound):
        scheduler = Scheduler(SchedulerConfig("expert-aware", 4, bound), 2)
        rare = _decoding(0, 1)
        scheduler.submit(rare, 0)
        index = 1
        for iteration in range(40):
            # Expert 0 always has more work than the budget, so Algorithm 1 alone never picks expert 1.
            for _ in range(5):
                scheduler.submit(_decoding(index, 0), iteration)
                index += 1
            batch = scheduler.next_batch(iteration)
            if rare in batch.requests:
                return iteration
        return None

    assert wait_of_rare_request(None) is None
    assert wait_of_rare_request(6) == 6
    assert wait_of_rare_request(0) == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"policy": "sjf"}, "unknown batching policy 'sjf'"),
        ({"max_batch_tokens": -1}, "max_batch_tokens=-1 must be a positive integer"),
        ({"max_batch_tokens": 0}, "max_batch_tokens=0"),
        ({"max_wait_iterations": -2}, "max_wait_iterations=-2"),
    ],
)
def test_scheduler_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ServeError, match=message):
        SchedulerConfig(**kwargs)


def test_submit_rejects_unschedulable_or_out_of_range_requests():
    scheduler = Scheduler(SchedulerConfig("fcfs", 3, None), 2)
    with pytest.raises(ServeError, match="prompt of 4 tokens exceeds max_batch_tokens=3"):
        scheduler.submit(_queued(0, [0, 0, 0, 0]), 0)
    with pytest.raises(ServeError, match="expert id 2 out of range"):
        scheduler.submit(_queued(1, [2]), 0)


def test_service_order_puts_items_overdue_at_the_next_iteration_first():
    # The lookahead's projected order must match what next_batch does, starvation step included: a Belady cache
    # that ranked the overdue item of a small queue last would evict the expert the next batch needs first.
    scheduler = Scheduler(SchedulerConfig("expert-aware", max_batch_tokens=4, max_wait_iterations=2), 3)
    scheduler.submit(_decoding(0, 0), 0)  # alone in queue 0: Algorithm 1 alone would defer it
    for index in range(1, 9):
        scheduler.submit(_decoding(index, 2), 0)
    assert [r.spec.request_id for r in scheduler.next_batch(0).requests] == ["d1", "d2", "d3", "d4"]
    # d0 has waited 1 iteration; at iteration 1 it is not overdue yet, at iteration 2 it is.
    assert next(scheduler.service_order()).spec.request_id == "d5"
    assert [r.spec.request_id for r in scheduler.next_batch(1).requests] == ["d5", "d6", "d7", "d8"]
    order = [r.spec.request_id for r in scheduler.service_order()]
    assert order == ["d0"]
    scheduler.submit(_decoding(9, 2), 2)
    scheduler.submit(_decoding(10, 2), 2)
    order = [r.spec.request_id for r in scheduler.service_order()]
    assert order == ["d0", "d9", "d10"]  # overdue first, then the largest queue, each item once
    assert [r.spec.request_id for r in scheduler.next_batch(2).requests] == order
