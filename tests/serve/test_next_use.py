"""belady-expected: exact Belady when the future is known, exact per-request forecasts, deterministic runs,
statistics from traces and files, and clear errors for bad statistics."""

import dataclasses
import itertools
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from readme_jax.cli import main
from serve.core.cache_policies import EXPECTED, make_policy
from serve.core.expert_cache import CacheConfig, ExpertCache
from serve.core.next_use import Forecast, NextUseConfig, expected_first_use
from serve.core.transitions import TransitionStats, estimate_transitions, stats_from_json
from serve.core.scheduler import SchedulerConfig
from serve.core.types import ServeError
from serve.sim import bench
from serve.sim.cache_replay import SequenceLookahead, replay_batches
from serve.sim.cost_model import llama2_7b_a100
from serve.sim.simulate import SimConfig, simulate
from serve.sim.trace import Trace, TraceHeader, write_trace
from serve.sim.transition_stats import read_stats, write_stats
from serve.sim.workload import WorkloadConfig, synthetic_workload
from tests.serve.test_expert_cache import batch_sequences, brute_force_hits

E = 4


class CertainForecast(SequenceLookahead):
    """The whole known future handed to the policy as forecasts that are certain (survival 0), with nothing
    known exactly: ``expected_next_use`` must then be the true next use."""

    def expected_next_use(self, key):
        use = self.next_use(key)
        events = [] if use == math.inf else [(float(use), 0.0)]
        return expected_first_use(math.inf, events, far=1e9)


def _replay_with(batches, capacity, view):
    cache = ExpertCache(capacity, make_policy(EXPECTED))
    start = 0
    for batch in batches:
        view.move_to(start + len(batch) - 1)
        cache.access_batch(list(batch), view)
        start += len(batch)
    return cache.counters.hits


@settings(max_examples=150, deadline=None)
@given(batch_sequences(), st.integers(1, 3))
def test_fully_known_future_gives_the_brute_force_optimum(batches, capacity):
    optimum = brute_force_hits(batches, capacity)
    assert replay_batches(batches, capacity, EXPECTED).hits == optimum  # known exactly: Belady
    keys = [key for batch in batches for key in batch]
    assert _replay_with(batches, capacity, CertainForecast(keys)) == optimum  # known as certain forecasts


def test_expected_first_use_combines_known_and_forecast_uses():
    assert expected_first_use(5.0, [], far=100.0) == 5.0
    assert expected_first_use(math.inf, [], far=100.0) == math.inf
    assert expected_first_use(5.0, [(2.0, 0.0)], far=100.0) == 2.0  # a certain earlier use
    # Half a chance of a use at 2, else the known use at 5.
    assert expected_first_use(5.0, [(2.0, 0.5)], far=100.0) == pytest.approx(3.5)
    # Nothing known: the far horizon stands in for "later", so a likelier forecast ranks nearer.
    likely = expected_first_use(math.inf, [(3.0, 0.1)], far=100.0)
    unlikely = expected_first_use(math.inf, [(3.0, 0.9)], far=100.0)
    assert 3.0 < likely < unlikely < 100.0


def _stats(counts, tokens=40, finishes=4):
    return TransitionStats(len(counts), tuple(map(tuple, counts)), tokens, finishes)


def visit_chance(p, go, current, target, horizon):
    """Brute force: the chance that one of the next ``horizon`` tokens is on ``target``, over every path; the
    request stops after a token with chance 1 - go."""
    visit = 0.0
    for length in range(1, horizon + 1):
        for path in itertools.product(range(len(p)), repeat=length):
            chance, previous = go**length, current
            for expert in path:
                chance *= p[previous][expert]
                previous = expert
            if path[-1] == target and target not in path[:-1]:
                visit += chance
    return visit


def test_forecast_hazards_give_the_exact_chance_of_a_visit_per_request():
    stats = _stats([[5, 1, 0], [2, 3, 4], [0, 1, 9]], tokens=30, finishes=3)
    horizon = 3
    forecast = Forecast(stats, horizon)
    p, go = stats.matrix(), 1.0 - stats.stop_probability()
    for current, target in itertools.product(range(3), range(3)):
        survive = math.prod(1.0 - forecast.hazard[current][k][target] for k in range(horizon))
        assert 1.0 - survive == pytest.approx(visit_chance(p, go, current, target, horizon))
        assert math.isclose(
            sum(forecast.log_miss[current][k][target] for k in range(horizon)), math.log(survive), rel_tol=1e-9
        )


def test_estimate_counts_every_transition_token_and_finish():
    specs = synthetic_workload(WorkloadConfig(num_requests=30, num_experts=E, seed=3))
    stats = estimate_transitions(specs, E)
    assert sum(map(sum, stats.counts)) == sum(s.prompt_len + s.num_output_tokens - 1 for s in specs)
    assert stats.tokens == sum(s.num_output_tokens for s in specs) and stats.finishes == 30
    assert 0.0 < stats.stop_probability() < 1.0 and 0.0 <= stats.repeat_rate() <= 1.0
    assert stats_from_json(json.loads(json.dumps(stats.to_json())), "x") == stats


def _sim(specs, policy, capacity=2, next_use=None, concurrency=None, batching="expert-aware", unit="expert"):
    cost = dataclasses.replace(llama2_7b_a100(), num_layers=2)
    cache = CacheConfig(E, 2, capacity, unit, policy)
    config = SimConfig(SchedulerConfig(batching, 256, 32, 4), cost, cache, "layer", concurrency=concurrency,
                       next_use=next_use)
    return simulate(specs, E, config)


@pytest.mark.parametrize("batching", ["expert-aware", "decode-first", "fcfs"])
@pytest.mark.parametrize("unit, capacity", [("expert", 2), ("slice", 3)])
def test_runs_serve_everything_deterministically_with_consistent_counters(batching, unit, capacity):
    specs = synthetic_workload(WorkloadConfig(num_requests=25, num_experts=E, output_mean=20.0, seed=1))
    fixed = NextUseConfig(estimate_transitions(specs, E), online=False)
    for next_use in (None, fixed):
        first = _sim(specs, EXPECTED, capacity, next_use, concurrency=6, batching=batching, unit=unit)
        again = _sim(specs, EXPECTED, capacity, next_use, concurrency=6, batching=batching, unit=unit)
        assert first.cache == again.cache and first.batch_duration_s == again.batch_duration_s
        assert all(r.finish_s is not None for r in first.requests)
        c = first.cache
        assert c.hits + c.misses == c.accesses and c.loads - c.evictions <= capacity


def test_the_rollout_memo_changes_no_decision(monkeypatch):
    from serve.core import lookahead

    specs = synthetic_workload(WorkloadConfig(num_requests=40, num_experts=E, output_mean=20.0, seed=2))
    fixed = NextUseConfig(estimate_transitions(specs, E), online=False)
    rollout, size = lookahead.expert_aware_rollout, lookahead.ROLLOUT_MEMO
    for next_use in (None, fixed):  # online (the memo restarts with each new forecast) and fixed statistics
        runs = {}
        for memo_size in (size, 0):
            calls = []
            monkeypatch.setattr(lookahead, "ROLLOUT_MEMO", memo_size)
            monkeypatch.setattr(lookahead, "expert_aware_rollout", lambda *a: calls.append(1) or rollout(*a))
            runs[memo_size] = (_sim(specs, EXPECTED, 2, next_use, concurrency=8), len(calls))
        (memo, memo_calls), (plain, plain_calls) = runs.values()
        assert memo_calls < plain_calls  # the memo was used
        assert memo.cache == plain.cache and memo.batch_duration_s == plain.batch_duration_s


def test_statistics_for_another_number_of_experts_are_refused():
    specs = synthetic_workload(WorkloadConfig(num_requests=5, num_experts=E, seed=0))
    other = estimate_transitions(synthetic_workload(WorkloadConfig(num_requests=5, num_experts=3)), 3)
    with pytest.raises(ServeError, match="for 3 experts, but the workload has 4"):
        _sim(specs, EXPECTED, next_use=NextUseConfig(other, online=False))


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"format": "other"}', "format='other'"),
        ('{"format": "readme-jax-transition-stats", "version": 1, "num_experts": 2, "counts": [[1, 2]], '
         '"tokens": 3, "finishes": 1}', "counts must be 2 x 2"),
        ('{"format": "readme-jax-transition-stats", "version": 1, "num_experts": 2, "counts": [[1, -2], [0, 0]], '
         '"tokens": 3, "finishes": 1}', "counts[0][1]=-2"),
        ('{"format": "readme-jax-transition-stats", "version": 1, "num_experts": 2, "counts": [[1, 2], [0, 0]], '
         '"tokens": 3}', "missing field 'finishes'"),
    ],
)
def test_malformed_statistics_file_is_named(tmp_path, text, message):
    path = tmp_path / "bad-stats.json"
    path.write_text(text)
    with pytest.raises(ServeError, match="bad-stats.json") as info:
        read_stats(path)
    assert message in str(info.value)


def test_bench_cache_reports_expected_in_the_loop_with_the_gap_closed():
    specs = synthetic_workload(WorkloadConfig(num_requests=30, num_experts=E, output_mean=30.0, seed=2))
    cost = dataclasses.replace(llama2_7b_a100(), num_layers=2)
    policies = ("lru", "belady", EXPECTED, "belady-offline")
    result = bench.run_cache_bench(specs, E, SchedulerConfig("expert-aware", 256, 32, 4), cost, [2], policies,
                                   regime="memory-limited", concurrency=8)
    row = result["rows"][0]
    assert EXPECTED not in row["policies"] and set(row["closed_loop"]) == {"lru", "belady", EXPECTED}
    lru, best = row["closed_loop"]["lru"]["hit_ratio"], row["policies"]["belady-offline"]["hit_ratio"]
    for name in ("belady", EXPECTED):
        gap = row["gap_closed"][name]
        assert gap == pytest.approx((row["closed_loop"][name]["hit_ratio"] - lru) / (best - lru))
    assert set(row["loop_seconds"]) == set(row["closed_loop"]) and min(row["loop_seconds"].values()) > 0
    table = bench.format_cache_table(result)
    assert "gap closed in the loop" in table and "seconds per simulation in the loop" in table
    in_loop = table.split("serving in the loop")[1].splitlines()[1]
    assert in_loop.split() == ["capacity", "lru", "belady", EXPECTED]  # every column apart, the widest too
    with pytest.raises(ServeError, match="in the loop only"):
        bench.run_cache_bench(specs, E, SchedulerConfig(), cost, [2], policies, regime="resident")


def test_cli_estimates_on_one_slice_and_replays_another(capsys, tmp_path):
    specs = synthetic_workload(WorkloadConfig(num_requests=40, num_experts=E, output_mean=20.0, seed=4))
    trace = tmp_path / "t.jsonl"
    write_trace(trace, Trace(TraceHeader(E, 2, "synthetic-markov"), tuple(specs)))
    stats_path = tmp_path / "s.json"
    assert main(["transition-stats", "--trace", str(trace), "--skip", "30", "--out", str(stats_path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["first_request"] == 30 and summary["requests"] == 10
    assert read_stats(stats_path) == estimate_transitions(specs[30:], E)
    argv = ["bench-cache", "--json", "--no-plot", "--trace", str(trace), "--requests", "30", "--concurrency", "6",
            "--regime", "memory-limited", "--capacities", "2", "--policies", f"lru,{EXPECTED},belady-offline"]
    assert main([*argv, "--transition-stats", str(stats_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert EXPECTED in result["rows"][0]["gap_closed"]
    assert result["forecast"] == {"transition_stats": str(stats_path), "learn_online": False, "forecast_tokens": 2}
    write_stats(stats_path, TransitionStats(3, ((0, 0, 0),) * 3))
    assert main([*argv, "--transition-stats", str(stats_path)]) == 2
    assert "s.json are for 3 experts, but the workload has 4" in capsys.readouterr().err
    stats_path.write_text("{not json")
    assert main([*argv, "--transition-stats", str(stats_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: transition statistics") and "s.json: not JSON" in err
    sched = ["bench-sched", "--no-plot", "--rates", "4", "--requests", "20", "--cache-capacity", "2",
             "--cache-policy", EXPECTED, "--policies", "expert-aware"]
    assert main(sched) == 0 and "belady-expected: statistics learned online" in capsys.readouterr().out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("budget, cap", [(256, 4), (40, None), (64, 3)])
def test_rollout_without_continuation_is_the_schedulers_own_batching(seed, budget, cap):
    """With no request continuing (go = 0), the rollout plays Algorithm 1 exactly: every expert's first
    projected batch is the one the real scheduler serves it in, when nothing new arrives."""
    from serve.core.rollout import expert_aware_rollout
    from serve.core.scheduler import Scheduler
    from serve.core.types import Request

    config = WorkloadConfig(num_requests=12, num_experts=E, prompt_mean=10.0, prompt_max=30, seed=seed)
    scheduler = Scheduler(SchedulerConfig("expert-aware", budget, None, cap), E)
    for index, spec in enumerate(synthetic_workload(config)):
        scheduler.submit(Request(spec, index), 0)
    pending = [(r.queue_expert, r.work_tokens, r.spec.prompt_experts[-1], r.work_experts)
               for r in scheduler.service_order()]
    identity = [[1.0 if a == b else 0.0 for b in range(E)] for a in range(E)]
    known, served = expert_aware_rollout(pending, {}, identity, 0.0, budget, scheduler.config.slot_limit, 50)
    first = {}
    for iteration in range(1, 51):
        for request in scheduler.next_batch(iteration).requests:
            for expert in request.work_experts:
                first.setdefault(expert, iteration)
    assert known == first
