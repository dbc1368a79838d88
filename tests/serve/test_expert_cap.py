"""The expert cap per batch and chunked prefill (what the real engine needs: a batch's experts all resident)."""

import pytest

from serve.core.scheduler import Scheduler, SchedulerConfig
from serve.core.types import Request, RequestSpec, ServeError, prefill_chunks
from serve.sim.cost_model import llama2_7b_a100
from serve.core.expert_cache import CacheConfig
from serve.sim.simulate import SimConfig, simulate
from serve.sim.workload import WorkloadConfig, synthetic_workload


@pytest.mark.parametrize("experts,cap,tokens", [((0, 1, 2, 2, 3, 0), 2, None), ((0,) * 10, 3, 4), ((1, 2, 3), 1, 2)])
def test_chunks_cover_the_prompt_in_order_within_both_limits(experts, cap, tokens):
    chunks = prefill_chunks(experts, cap, tokens)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(experts)
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    for start, end in chunks:
        assert end > start
        assert len(set(experts[start:end])) <= cap
        assert tokens is None or end - start <= tokens


def test_without_limits_the_prompt_is_one_chunk():
    assert prefill_chunks((3, 1, 4, 1, 5)) == ((0, 5),)


@pytest.mark.parametrize("policy", ["expert-aware", "decode-first", "prefill-first", "fcfs"])
def test_every_batch_stays_within_the_cap_and_every_request_finishes(policy):
    specs = synthetic_workload(WorkloadConfig(num_requests=40, num_experts=6, output_mean=8.0, output_max=16,
                                              prompt_max=200, seed=3))
    cost = llama2_7b_a100()
    cache = CacheConfig(num_experts=6, num_layers=cost.num_layers, capacity=2, policy="belady")
    config = SimConfig(SchedulerConfig(policy, 64, max_batch_requests=8, max_batch_experts=2), cost, cache,
                       prefetch="next", protect_batch=True)
    result = simulate(specs, 6, config)
    assert max(result.batch_experts) <= 2
    assert all(r.finish_s is not None and r.generated == r.num_output for r in result.requests)
    counters = result.cache
    assert counters.hits + counters.misses == counters.accesses
    assert counters.loads == counters.misses + counters.prefetches


def test_a_chunk_wider_than_the_cap_is_refused():
    spec = RequestSpec("r", 0.0, (0, 1, 2), (0,), 1)
    scheduler = Scheduler(SchedulerConfig(max_batch_experts=2), 3)
    with pytest.raises(ServeError, match="max_batch_experts"):
        scheduler.submit(Request(spec, 0), 0)
    scheduler.submit(Request(spec, 0, scheduler.config.chunks(spec)), 0)
    assert scheduler.next_batch(0).experts == (0, 1)
