"""Bursty arrivals: the Gamma renewal process, its Poisson special case, trace retiming and the --arrival-cv flag."""

import dataclasses
import hashlib
import itertools
import json
import math
import random
import statistics

import pytest

from readme_jax.cli import main
from serve.core.types import ServeError
from serve.sim.workload import (
    WorkloadConfig,
    arrival_gap,
    mean_rate,
    retime_arrivals,
    synthetic_workload,
)


def _canonical_sha(specs) -> str:
    rows = [(s.request_id, s.arrival_s.hex(), s.prompt_experts, s.output_experts, s.max_new_tokens) for s in specs]
    return hashlib.sha256(repr(rows).encode()).hexdigest()


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 4.0])
def test_gaps_have_the_requested_mean_and_cv(cv):
    rng = random.Random(11)
    rate = 5.0
    gaps = [arrival_gap(rng, rate, cv) for _ in range(20_000)]
    assert min(gaps) >= 0.0
    mean = statistics.fmean(gaps)
    # Standard error of the mean is cv / sqrt(n) relative (2.8% at cv 4); that of the sample CV is larger for a
    # skewed Gamma (about 3.5% at cv 4, excess kurtosis 6 cv^2). Bounds: about 3 standard errors.
    assert mean == pytest.approx(1.0 / rate, rel=0.03 * max(1.0, cv))
    assert statistics.pstdev(gaps) / mean == pytest.approx(cv, rel=0.1)


def test_cv_one_is_the_previous_poisson_workload_bit_for_bit():
    # Recorded before arrival_cv existed (exponential gaps from rng.expovariate), on the same config.
    expected = "73e15b19989eedf0460e90889c292fda3f391353c1782755ce90bd29a867bb02"
    default = synthetic_workload(WorkloadConfig(num_requests=200, rate_per_s=6.0, seed=3))
    explicit = synthetic_workload(WorkloadConfig(num_requests=200, rate_per_s=6.0, seed=3, arrival_cv=1.0))
    assert _canonical_sha(default) == _canonical_sha(explicit) == expected
    assert default[0].arrival_s.hex() == "0x1.730bcf4398903p-5"
    bursty = synthetic_workload(WorkloadConfig(num_requests=200, rate_per_s=6.0, seed=3, arrival_cv=3.0))
    assert [s.arrival_s for s in bursty] != [s.arrival_s for s in default]
    assert [s.arrival_s for s in bursty] == sorted(s.arrival_s for s in bursty)


def test_bursty_workload_clumps_arrivals_at_the_same_mean_rate():
    short = {"num_requests": 4000, "rate_per_s": 2.0, "seed": 1, "prompt_max": 2, "output_max": 2}
    poisson = synthetic_workload(WorkloadConfig(**short))
    bursty = synthetic_workload(WorkloadConfig(**short, arrival_cv=4.0))
    assert mean_rate(bursty) == pytest.approx(2.0, rel=0.2) and mean_rate(poisson) == pytest.approx(2.0, rel=0.1)

    def short_gaps(specs):  # share of gaps under a tenth of the mean gap (exponential: 1 - e^-0.1 = 9.5%)
        times = [0.0] + [s.arrival_s for s in specs]
        return sum(b - a < 0.05 for a, b in itertools.pairwise(times)) / len(specs)

    assert short_gaps(poisson) == pytest.approx(0.095, abs=0.02)
    assert short_gaps(bursty) > 0.6


def test_retime_keeps_requests_and_order_and_is_deterministic_per_seed():
    specs = synthetic_workload(WorkloadConfig(num_requests=300, rate_per_s=6.0, seed=2))
    retimed = retime_arrivals(specs, 1.5, 3.0, seed=5)
    assert [dataclasses.replace(s, arrival_s=0.0) for s in retimed] == [
        dataclasses.replace(s, arrival_s=0.0) for s in specs
    ]
    arrivals = [s.arrival_s for s in retimed]
    assert arrivals == sorted(arrivals) and arrivals != [s.arrival_s for s in specs]
    assert mean_rate(retimed) == pytest.approx(1.5, rel=1e-12)
    assert retime_arrivals(specs, 1.5, 3.0, seed=5) == retimed
    assert retime_arrivals(specs, 1.5, 3.0, seed=6) != retimed
    # One seed: the same burst pattern at every rate, only the time scale differs.
    faster = retime_arrivals(specs, 6.0, 3.0, seed=5)
    assert [f.arrival_s * 4.0 for f in faster] == pytest.approx(arrivals, rel=1e-9)
    assert retime_arrivals([], 1.0, 2.0) == []


@pytest.mark.parametrize("cv", [0.0, -1.0, math.nan, math.inf])
def test_bad_cv_is_named(cv):
    specs = synthetic_workload(WorkloadConfig(num_requests=5))
    with pytest.raises(ServeError, match=f"arrival_cv={cv!r} must be finite and > 0"):
        WorkloadConfig(arrival_cv=cv)
    with pytest.raises(ServeError, match=f"arrival_cv={cv!r} must be finite and > 0"):
        retime_arrivals(specs, 1.0, cv)


@pytest.mark.parametrize("rate", [0.0, -2.0, math.nan, math.inf])
def test_bad_rate_is_named(rate):
    specs = synthetic_workload(WorkloadConfig(num_requests=5))
    with pytest.raises(ServeError, match=f"rate_per_s={rate!r} must be finite and > 0"):
        retime_arrivals(specs, rate, 2.0)
    with pytest.raises(ServeError, match=f"rate_per_s={rate!r} must be finite and > 0"):
        WorkloadConfig(rate_per_s=rate, arrival_cv=2.0)


SMALL = ["--json", "--no-plot", "--requests", "40", "--policies", "fcfs"]


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_flag_reaches_the_synthetic_simulation(capsys):
    poisson = _json(capsys, ["bench-sched", "--rates", "30", *SMALL])
    bursty = _json(capsys, ["bench-sched", "--rates", "30", "--arrival-cv", "3", *SMALL])
    assert poisson["workload"]["arrival_cv"] == 1.0 and bursty["workload"]["arrival_cv"] == 3.0
    assert bursty["workload"]["synthetic"]["arrival_cv"] == 3.0
    assert bursty["runs"][0]["makespan_s"] != poisson["runs"][0]["makespan_s"]
    assert main(["bench-sched", "--rates", "30", "--arrival-cv", "3", "--no-plot", "--requests", "10"]) == 0
    assert "arrival_cv=3" in capsys.readouterr().out


def test_flag_redraws_trace_arrivals_at_each_rate(capsys, tmp_path):
    trace = tmp_path / "w.jsonl"
    _json(capsys, ["bench-sched", "--rates", "6", "--save-trace", str(trace), *SMALL])
    replay = ["bench-sched", "--trace", str(trace), *SMALL]
    kept = _json(capsys, [*replay, "--rates", "2"])
    redrawn = _json(capsys, [*replay, "--rates", "2,4", "--arrival-cv", "2.5", "--seed", "3"])
    assert kept["workload"]["arrival_cv"] is None and "redrawn_at_rates_per_s" not in kept["workload"]
    assert redrawn["workload"]["arrival_cv"] == 2.5 and redrawn["workload"]["redrawn_at_rates_per_s"] == [2.0, 4.0]
    assert redrawn["workload"]["arrival_seed"] == 3
    assert [run["rate_per_s"] for run in redrawn["runs"]] == [2.0, 4.0]
    assert redrawn["runs"][0]["makespan_s"] != kept["runs"][0]["makespan_s"]
    cache = _json(capsys, ["bench-cache", "--trace", str(trace), "--json", "--no-plot", "--capacities", "2",
                           "--rate", "3", "--arrival-cv", "2"])
    assert cache["workload"]["arrival_cv"] == 2.0 and cache["workload"]["redrawn_at_rates_per_s"] == [3.0]
    assert main(["bench-cache", "--trace", str(trace), "--no-plot", "--capacities", "2", "--arrival-cv", "2"]) == 0
    assert "arrival_cv=2, seed 0, at the trace's rate" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_bad_flag_prints_one_error_line(capsys, value):
    assert main(["bench-sched", "--arrival-cv", value, "--no-plot", "--requests", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"--arrival-cv {float(value)!r}" in err
