"""Opt-in lookahead of the running batch's continuing requests (``SimConfig.lookahead_continuing``).

Default off must reproduce the previous simulator; on, each request of the running batch that keeps decoding
counts as a pending one-token item on its current token's expert, placed where its policy would queue it.
"""

import json

import pytest

from readme_jax.cli import main
from serve.sim.cost_model import CostModel
from serve.core.expert_cache import CacheConfig, ExpertCache
from serve.core.batching import ContinuingItem
from serve.core.scheduler import Scheduler, SchedulerConfig
from serve.core.lookahead import QueueLookahead
from serve.sim.simulate import SimConfig, simulate
from serve.core.types import Request, RequestSpec, RequestState, ServeError
from serve.sim.workload import WorkloadConfig, synthetic_workload

UNIT_COST = CostModel(
    num_layers=2, step_overhead_s=1.0, token_s=0.0, expert_s=0.0, slice_bytes=10, link_bytes_per_s=10.0
)

# (hits, misses, prefetches, iterations, total duration) recorded from the simulator before the mode existed.
HEAD = {
    ("expert-aware", "expert", "layer"): (98, 58, 0, 68, 160.5),
    ("expert-aware", "slice", "next"): (196, 116, 5, 68, 162.0),
    ("decode-first", "slice", "next"): (221, 119, 2, 65, 160.5),
    ("prefill-first", "expert", "next"): (112, 56, 1, 65, 155.0),
    ("fcfs", "slice", "layer"): (240, 122, 0, 69, 164.5),
}
CAPACITY = {"expert": 2, "slice": 4}


def _workload():
    config = WorkloadConfig(
        num_requests=40, rate_per_s=50.0, num_experts=4, prompt_mean=6, prompt_max=12, output_mean=8,
        output_max=16, seed=3,
    )  # fmt: skip
    return synthetic_workload(config)


def _run(specs, policy, unit, prefetch, **flags):
    cache = CacheConfig(4, 2, CAPACITY[unit], unit, "belady", 0)
    result = simulate(specs, 4, SimConfig(SchedulerConfig(policy, 16, 8, 4), UNIT_COST, cache, prefetch, **flags))
    c = result.cache
    return (c.hits, c.misses, c.prefetches, result.num_iterations, sum(result.batch_duration_s))


@pytest.mark.parametrize("key", sorted(HEAD))
def test_default_off_reproduces_the_previous_simulator(key):
    specs = _workload()
    assert _run(specs, *key) == HEAD[key]
    assert _run(specs, *key, lookahead_continuing=False) == HEAD[key]


@pytest.mark.parametrize("policy", ["expert-aware", "decode-first", "fcfs"])
def test_mode_on_serves_everything_and_keeps_counter_identities(policy):
    specs = _workload()
    cache = CacheConfig(4, 2, 2, "expert", "belady", 0)
    config = SimConfig(SchedulerConfig(policy, 16, 8, 4), UNIT_COST, cache, "next", lookahead_continuing=True)
    result = simulate(specs, 4, config)
    assert all(r.state is RequestState.FINISHED for r in result.requests)
    c = result.cache
    assert c.hits + c.misses == sum(result.batch_experts)
    assert c.prefetch_used + c.prefetch_wasted <= c.prefetches


def test_sim_config_rejects_a_non_bool_flag():
    with pytest.raises(ServeError, match="lookahead_continuing"):
        SimConfig(SchedulerConfig(), UNIT_COST, lookahead_continuing=1)


def _request(index, prompt, output, decoding=False):
    request = Request(RequestSpec(f"r{index}", 0.0, prompt, output, len(output)), index)
    if decoding:  # as after its prefill: the first generated token is pre-gated
        request.state = RequestState.DECODE
        request.generated = 1
        request.reveal_next_expert()
    return request


def _order(scheduler, continuing=()):
    """service_order as names: a Request's id, or ``+e`` for a hypothetical item on expert e."""
    out = []
    for item in scheduler.service_order(continuing):
        if isinstance(item, ContinuingItem):
            assert item.work_tokens == 1
            out.append(f"+{item.work_experts[0]}")
        else:
            out.append(item.spec.request_id)
    return out


def test_expert_aware_continuing_items_grow_their_queue_before_sorting():
    scheduler = Scheduler(SchedulerConfig("expert-aware", 64, None), 3)
    scheduler.submit(_request(0, (1, 1), (1,)), 0)  # queue 1: 2 tokens
    scheduler.submit(_request(1, (2,), (2,)), 0)  # queue 2: 1 token
    assert _order(scheduler) == ["r0", "r1"]
    assert _order(scheduler, ()) == ["r0", "r1"]
    # Two continuing tokens on expert 2 make its queue 3 tokens, the largest; they go to its tail.
    assert _order(scheduler, [2, 2]) == ["r1", "+2", "+2", "r0"]
    # One on expert 0 ties with queue 2 (1 token each): the lowest id first.
    assert _order(scheduler, [0]) == ["r0", "+0", "r1"]
    # One on expert 1 goes behind the queued prefill of expert 1.
    assert _order(scheduler, [1, 2]) == ["r0", "+1", "r1", "+2"]


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("decode-first", ["d", "+1", "+0", "p"]),
        ("prefill-first", ["p", "d", "+1", "+0"]),
        ("fcfs", ["p", "d", "+1", "+0"]),
    ],
)
def test_phase_and_fcfs_continuing_items_join_the_decode_queue_tail(policy, expected):
    scheduler = Scheduler(SchedulerConfig(policy, 64, None), 3)
    prefill = _request(0, (2, 2), (2,))
    decode = _request(1, (0,), (0, 2, 2), decoding=True)
    scheduler.submit(prefill, 0)
    scheduler.submit(decode, 0)
    names = {"r0": "p", "r1": "d"}
    assert [names.get(n, n) for n in _order(scheduler, [1, 0])] == expected
    assert [names[n] for n in _order(scheduler)] == [n for n in expected if not n.startswith("+")]


def test_overdue_items_still_come_first_and_continuing_items_are_not_overdue():
    scheduler = Scheduler(SchedulerConfig("expert-aware", 64, 2), 3)
    scheduler.submit(_request(0, (1,), (1,)), 0)  # small queue, overdue from iteration 2 on
    scheduler.submit(_request(1, (2, 2), (2,)), 3)
    scheduler.next_batch(3)  # takes both; resubmit to rebuild the state at iteration 4
    scheduler.submit(_request(2, (1,), (1,)), 0)
    scheduler.submit(_request(3, (2, 2), (2,)), 3)
    # r2 is overdue at iteration 4 (ready 0, bound 2); the rest follows the policy with the continuing tokens:
    # three on expert 0 outweigh queue 2's two tokens.
    assert _order(scheduler, [0, 0, 0]) == ["r2", "+0", "+0", "+0", "r3"]
    assert _order(scheduler, [2]) == ["r2", "r3", "+2"]


def _belady_setup(continuing_mode: bool):
    """Experts 0 and 3 resident (capacity 2). The running batch: r0 (expert 0) and r1 (expert 1), both still
    decoding afterwards, with no queued work on 0 or 1; r2 waits on expert 3. The miss on 1 forces an
    eviction among 0, 1 and 3."""
    scheduler = Scheduler(SchedulerConfig("expert-aware", 64, None), 4)
    running = [_request(0, (0,), (0, 0, 0), decoding=True), _request(1, (1,), (1, 1, 1), decoding=True)]
    for request in running:
        scheduler.submit(request, 0)
    batch = scheduler.next_batch(0)
    assert batch.experts == (0, 1)
    scheduler.submit(_request(2, (3,), (3,)), 0)  # an arrival during the iteration, pending afterwards
    cache = ExpertCache.from_config(CacheConfig(4, 1, 2, "expert", "belady", 0), 1)
    cache.access(3)
    cache.access(0)
    keys = list(batch.experts)
    continuing = [r.queue_expert for r in batch.requests] if continuing_mode else ()
    view = QueueLookahead(keys, scheduler, 4, 1, None, continuing)
    view.move_to(len(keys) - 1)
    return cache, keys, view


def test_belady_keeps_the_running_expert_whose_requests_continue():
    cache, keys, view = _belady_setup(continuing_mode=True)
    # Continuing tokens on 0 and 1 (one token each) tie with queue 3 and rank first by id: 3 is used last.
    assert (view.next_use(0), view.next_use(1), view.next_use(3)) == (2, 3, 4)
    cache.access_batch(keys, view)
    assert cache.resident == {0, 1}


def test_default_lookahead_evicts_the_running_expert_it_thinks_is_never_used():
    cache, keys, view = _belady_setup(continuing_mode=False)
    assert view.next_use(0) == float("inf") and view.next_use(3) == 2
    cache.access_batch(keys, view)
    assert 3 in cache.resident and 0 not in cache.resident


def test_simulator_guesses_each_continuing_request_on_its_current_expert():
    # One long request on expert 0 and short ones on 1 and 2, one sequence per batch: with the default
    # lookahead the running expert 0 has no queued work and is dropped; with continuing it stays.
    specs = [
        RequestSpec("long", 0.0, (0,), (0,) * 8, 8),
        RequestSpec("a", 0.0, (1,), (1,), 1),
        RequestSpec("b", 0.0, (2,), (2,), 1),
        RequestSpec("c", 3.0, (1,), (1,), 1),
    ]
    scheduler = SchedulerConfig("fcfs", 8, None, max_batch_requests=1)
    cache = CacheConfig(3, 2, 1, "expert", "belady", 0)
    off = simulate(specs, 3, SimConfig(scheduler, UNIT_COST, cache)).cache
    on = simulate(specs, 3, SimConfig(scheduler, UNIT_COST, cache, lookahead_continuing=True)).cache
    assert off.hits + off.misses == on.hits + on.misses
    assert on.hits >= off.hits


def test_cli_flag_reaches_both_benches(capsys):
    small = ["--requests", "30", "--no-plot", "--json"]
    cache = ["bench-cache", *small, "--regime", "memory-limited", "--capacities", "2"]
    assert main([*cache, "--lookahead-continuing"]) == 0
    assert json.loads(capsys.readouterr().out)["lookahead_continuing"] is True
    assert main(cache) == 0
    assert "lookahead_continuing" not in json.loads(capsys.readouterr().out)
    assert main(["bench-sched", *small, "--rates", "6", "--cache-capacity", "2", "--lookahead-continuing"]) == 0
    assert json.loads(capsys.readouterr().out)["lookahead_continuing"] is True
