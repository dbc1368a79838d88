"""belady-expected's home-conditioned forecast: the home rule, counts that add up, exact per-context hazards,
statistics files of both versions, and the rollout's per-item steps against the real scheduler."""

import dataclasses
import itertools
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve.core.home import HOME_WINDOW, RecentExperts, count_transitions, home_of, window_home
from serve.core.next_use import Forecast, NextUseConfig, TransitionModel
from serve.core.transitions import HOME_PRIOR, TransitionStats, estimate_transitions, stats_from_json
from serve.core.types import ServeError
from serve.sim.transition_stats import read_stats, write_stats
from serve.sim.workload import WorkloadConfig, synthetic_workload
from tests.serve.test_next_use import visit_chance

E = 4


def test_home_is_the_most_frequent_recent_expert_and_the_current_one_wins_ties():
    assert home_of([3, 1, 0, 0], 1) == 0  # 3 against 1.5
    assert home_of([2, 2, 0, 0], 1) == 1  # a tie: the current expert
    assert home_of([2, 0, 2, 0], 1) == 0  # a tie between two others: the lowest id
    assert window_home([2] * HOME_WINDOW + [0] * 5, 1, E) == 2
    assert window_home([0] * 40 + [2] * HOME_WINDOW, 0, E) == 2  # only the last HOME_WINDOW count
    recent = RecentExperts(E)
    assert recent.home("r", 3) == 3 and "r" not in recent  # never seen: its current expert
    for expert in [1] * 20 + [2] * 3:
        recent.push("r", expert)
    assert recent.home("r", 2) == 1
    for _ in range(HOME_WINDOW):
        recent.push("r", 2)  # the window slides: only expert 2 is left
    assert recent.home("r", 1) == 2
    recent.drop("r")
    assert "r" not in recent


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, E - 1), min_size=2, max_size=90))
def test_home_counts_split_the_transition_counts_by_the_home_before_each_token(sequence):
    counts = [[0] * E for _ in range(E)]
    home = [[[0] * E for _ in range(E)] for _ in range(E)]
    count_transitions(sequence, counts, home)
    for a, b in itertools.product(range(E), repeat=2):
        assert sum(home[h][a][b] for h in range(E)) == counts[a][b]
    # Brute force: the home of each transition from the window ending at its first token.
    expected = [[[0] * E for _ in range(E)] for _ in range(E)]
    went_home = 0
    for i in range(len(sequence) - 1):
        window = sequence[max(0, i + 1 - HOME_WINDOW):i + 1]
        score = {x: window.count(x) + (0.5 if x == sequence[i] else 0.0) for x in range(E)}
        h = max(range(E), key=lambda x: (score[x], -x))
        expected[h][sequence[i]][sequence[i + 1]] += 1
        went_home += sequence[i + 1] == h
    assert home == expected
    stats = TransitionStats(E, tuple(map(tuple, counts)), 1, 0, tuple(tuple(map(tuple, rows)) for rows in home))
    assert stats.home_rate() == pytest.approx(went_home / (len(sequence) - 1))


def test_a_home_context_forecasts_with_its_homes_matrix_exactly():
    specs = synthetic_workload(WorkloadConfig(num_requests=40, num_experts=3, output_mean=15.0, seed=5))
    stats = estimate_transitions(specs, 3)
    forecast = Forecast(stats, 3)
    homes = stats.home_matrices()
    go = 1.0 - stats.stop_probability()
    for h, current, target in itertools.product(range(3), repeat=3):
        context = 3 + h * 3 + current
        assert forecast.rows[context] == homes[h][current]
        survive = math.exp(sum(per_token[target] for per_token in forecast.context_log_miss(context)))
        assert 1.0 - survive == pytest.approx(visit_chance(homes[h], go, current, target, 3))
    # The first-order contexts are the plain chain.
    assert forecast.rows[:3] == stats.matrix() and forecast.context_log_miss(1) == forecast.log_miss[1]


def test_home_rows_shrink_towards_the_first_order_row():
    counts = ((6, 2), (1, 1))
    home = (((4, 0), (0, 0)), ((2, 2), (1, 1)))
    stats = TransitionStats(2, counts, 10, 1, home)
    p, homes = stats.matrix(), stats.home_matrices()
    assert homes[0][1] == p[1]  # nothing recorded for (home 0, current 1): exactly P
    assert homes[0][0][0] == pytest.approx((4 + HOME_PRIOR * p[0][0]) / (4 + HOME_PRIOR))
    assert all(math.isclose(sum(row), 1.0) for matrix in homes for row in matrix)
    assert TransitionStats(2, counts, 10, 1).home_matrices() == [p, p]  # no home counts (a version 1 file)


def test_statistics_files_of_both_versions_read_back(tmp_path):
    specs = synthetic_workload(WorkloadConfig(num_requests=20, num_experts=E, seed=1))
    stats = estimate_transitions(specs, E)
    path = write_stats(tmp_path / "s.json", stats)
    obj = json.loads(path.read_text())
    assert obj["version"] == 2 and obj["home_window"] == HOME_WINDOW and read_stats(path) == stats
    old = {k: v for k, v in obj.items() if k not in ("home_window", "home_counts")} | {"version": 1}
    first_order = stats_from_json(old, "v1")
    assert first_order.home_counts is None and first_order.counts == stats.counts
    model = TransitionModel(E, prior=first_order, online=False)  # a version 1 prior: homes forecast as P
    assert model.forecast.rows[E:E + E] == first_order.matrix()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"home_window": 16}, "home_window=16, but this version uses 32"),
        ({"home_counts": [[[0] * E] * E] * 3}, f"home_counts must be {E} x {E} x {E}"),
        ({"home_counts": "x"}, "home_counts must be a list of lists of lists"),
        ({"version": 3}, "unsupported version 3"),
    ],
)
def test_malformed_home_statistics_are_named(change, message):
    specs = synthetic_workload(WorkloadConfig(num_requests=5, num_experts=E, seed=0))
    obj = estimate_transitions(specs, E).to_json() | change
    with pytest.raises(ServeError, match="stats.json") as info:
        stats_from_json(obj, "stats.json")
    assert message in str(info.value)
    missing = {k: v for k, v in estimate_transitions(specs, E).to_json().items() if k != "home_counts"}
    with pytest.raises(ServeError, match="missing field 'home_counts'"):
        stats_from_json(missing, "stats.json")


def test_online_learning_counts_what_an_estimate_over_the_served_requests_counts(monkeypatch):
    """Run every request alone (one at a time, no chunking): the online model's counts, home counts included,
    equal ``estimate_transitions`` over the same requests."""
    from serve.core import lookahead
    from serve.core.expert_cache import CacheConfig
    from serve.core.scheduler import SchedulerConfig
    from serve.sim.cost_model import llama2_7b_a100
    from serve.sim.simulate import SimConfig, simulate

    specs = synthetic_workload(WorkloadConfig(num_requests=6, num_experts=E, output_mean=12.0, seed=3))
    models = []
    original = lookahead.ExpectedLookahead.__init__

    def keep(self, *args):
        models.append(args[-1])
        original(self, *args)

    monkeypatch.setattr(lookahead.ExpectedLookahead, "__init__", keep)
    cost = dataclasses.replace(llama2_7b_a100(), num_layers=2)
    cache = CacheConfig(E, 2, 1, "expert", "belady-expected")
    config = SimConfig(SchedulerConfig("fcfs", 4096, None, 1), cost, cache, "layer", concurrency=1,
                       next_use=NextUseConfig())
    simulate(specs, E, config)
    learned = models[-1].stats()
    # A request's last token is generated but never runs, so its transition is never seen live; and the last
    # request's finish would be counted only after a later batch.
    reference = estimate_transitions([dataclasses.replace(s, output_experts=s.output_experts[:-1]) for s in specs], E)
    assert learned.counts == reference.counts and learned.home_counts == reference.home_counts
    assert learned.tokens == sum(s.num_output_tokens for s in specs)  # one per batch a request runs in
    assert learned.finishes == len(specs) - 1


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("budget, cap", [(256, 4), (40, None), (64, 3)])
def test_rollout_item_steps_are_the_iterations_the_scheduler_serves_each_item_in(seed, budget, cap):
    from serve.core.rollout import expert_aware_rollout
    from serve.core.scheduler import Scheduler, SchedulerConfig
    from serve.core.types import Request

    config = WorkloadConfig(num_requests=12, num_experts=E, prompt_mean=10.0, prompt_max=30, seed=seed)
    scheduler = Scheduler(SchedulerConfig("expert-aware", budget, None, cap), E)
    for index, spec in enumerate(synthetic_workload(config)):
        scheduler.submit(Request(spec, index), 0)
    order = list(scheduler.service_order())
    pending = [(r.queue_expert, r.work_tokens, r.spec.prompt_experts[-1], r.work_experts) for r in order]
    identity = [[1.0 if a == b else 0.0 for b in range(E)] for a in range(E)]
    steps = []
    expert_aware_rollout(pending, {}, identity, 0.0, budget, scheduler.config.slot_limit, 3, None, steps)
    served = {}
    for iteration in range(1, 60):
        for request in scheduler.next_batch(iteration).requests:
            served[request.index] = iteration
    # The first 3 steps are played; the rest is cut from the service order, as the scheduler would run it
    # when nothing new arrives.
    assert steps == [served[r.index] for r in order]
