"""Synthetic workload: seeded, well-formed, and its locality and popularity knobs move the right way."""

import dataclasses
from collections import Counter

import pytest

from serve.core.types import ServeError
from serve.sim.workload import WorkloadConfig, repeat_rate, synthetic_workload


def test_same_seed_same_workload_and_other_seed_differs():
    config = WorkloadConfig(num_requests=50, seed=4)
    assert synthetic_workload(config) == synthetic_workload(config)
    other = WorkloadConfig(num_requests=50, seed=5)
    assert synthetic_workload(config) != synthetic_workload(other)


def test_requests_are_well_formed():
    config = WorkloadConfig(num_requests=300, num_experts=5, prompt_max=40, output_max=30, rate_per_s=10.0)
    specs = synthetic_workload(config)
    arrivals = [s.arrival_s for s in specs]
    assert arrivals == sorted(arrivals) and arrivals[0] > 0
    assert len({s.request_id for s in specs}) == len(specs)
    for spec in specs:
        assert 1 <= spec.prompt_len <= 40 and 1 <= spec.num_output_tokens <= 30 <= spec.max_new_tokens
        assert 0 <= spec.min_expert() and spec.max_expert() < 5
    # Poisson arrivals: the mean gap is 1 / rate (loose bound, 300 samples).
    assert 0.07 < arrivals[-1] / len(arrivals) < 0.13


def test_locality_knob_raises_the_repeat_rate():
    rates = [repeat_rate(synthetic_workload(WorkloadConfig(num_requests=150, stay=s))) for s in (0.0, 0.4, 0.8)]
    assert rates[0] < rates[1] < rates[2]
    # Default parameters are tuned to the paper's measured 2921 / 4096 = 0.71.
    assert abs(repeat_rate(synthetic_workload(WorkloadConfig(num_requests=300))) - 0.713) < 0.03


def test_popularity_is_skewed_towards_low_ids():
    specs = synthetic_workload(WorkloadConfig(num_requests=300, popularity_skew=1.5))
    counts = Counter(e for s in specs for e in s.prompt_experts + s.output_experts)
    assert counts[0] == max(counts.values())
    flat = synthetic_workload(WorkloadConfig(num_requests=300, popularity_skew=0.0, home_weight=0.0))
    flat_counts = Counter(e for s in flat for e in s.prompt_experts + s.output_experts)
    assert max(flat_counts.values()) < 1.3 * min(flat_counts.values())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_requests": 0}, "num_requests=0"),
        ({"rate_per_s": -1.0}, "rate_per_s=-1.0"),
        ({"stay": 1.0}, r"stay=1.0 must lie in \[0, 1\)"),
        ({"home_weight": 1.5}, "home_weight=1.5"),
        ({"num_experts": 0}, "num_experts=0"),
        ({"prompt_sigma": float("nan")}, "prompt_sigma=nan"),
    ],
)
def test_workload_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ServeError, match=message):
        WorkloadConfig(**kwargs)


def test_rescaled_arrivals_keep_order_and_hit_the_rate():
    from serve.sim.workload import mean_rate, rescale_rate

    specs = synthetic_workload(WorkloadConfig(num_requests=200, rate_per_s=6.0, seed=1))
    slower = rescale_rate(specs, 2.0)
    assert mean_rate(slower) == pytest.approx(2.0)
    assert [s.request_id for s in slower] == [s.request_id for s in specs]
    ratios = {round(a.arrival_s / b.arrival_s, 9) for a, b in zip(slower, specs)}
    assert len(ratios) == 1  # one time scale for every arrival: the same arrival pattern, stretched
    assert [s.prompt_experts for s in slower] == [s.prompt_experts for s in specs]
    with pytest.raises(ServeError, match="rate_per_s=0"):
        rescale_rate(specs, 0)
    at_once = [dataclasses.replace(s, arrival_s=0.0) for s in specs[:3]]
    with pytest.raises(ServeError, match="every arrival_s is 0.0"):
        rescale_rate(at_once, 1.0)
