"""The PNG plot helpers of every layer write valid files and leave the caller's matplotlib backend alone (a
notebook's inline backend must survive a ``train()`` or a bench plot); ``draw_cache`` draws on given axes."""

import json

import matplotlib
import numpy as np
import pytest

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def svg_backend():
    """A backend none of the helpers would pick, restored afterwards."""
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    yield "svg"
    matplotlib.use(before)


@pytest.fixture(scope="module")
def cache_result():
    from serve.core.scheduler import SchedulerConfig
    from serve.sim.bench import run_cache_bench
    from serve.sim.cost_model import llama2_7b_a100
    from serve.sim.workload import WorkloadConfig, synthetic_workload

    specs = synthetic_workload(WorkloadConfig(num_requests=30, num_experts=4, prompt_max=32, output_max=16))
    return run_cache_bench(specs, 4, SchedulerConfig("expert-aware"), llama2_7b_a100(), [1, 2, 3],
                           policies=("lru", "belady-offline"))


def test_draw_cache_draws_each_policy_on_given_axes(cache_result):
    from matplotlib.figure import Figure

    from serve.sim.plots import draw_cache

    ax = Figure().subplots()
    draw_cache(ax, cache_result)
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"lru", "belady-offline"}
    for name, line in lines.items():
        assert list(line.get_xdata()) == [1, 2, 3]
        want = [100 * row["policies"][name]["hit_ratio"] for row in cache_result["rows"]]
        np.testing.assert_allclose(line.get_ydata(), want)
    assert lines["belady-offline"].get_linestyle() == "--"


def test_plot_helpers_keep_the_backend(svg_backend, cache_result, tmp_path):
    from readme_jax import analysis
    from readme_jax.evaluate import Routes
    from serve.sim.plots import plot_cache, plot_sched
    from train.plots import plot_metrics

    written = [plot_cache(cache_result, tmp_path / "cache.png")]
    sched = {"runs": [{"policy": p, "rate_per_s": r, "normalized_latency_s": {"p95": 0.01},
                       "unique_experts_per_batch": 2.0} for p in ("fcfs", "expert-aware") for r in (6.0, 12.0)]}
    written.append(plot_sched(sched, tmp_path / "sched.png"))
    rows = [{"global_step": g, "round": 0, "stage": s, "step": i, "loss": 1.0 / g, "router_acc": 0.5}
            for g, (s, i) in enumerate([("router", 1), ("router", 2), ("expert", 1), ("expert", 2)], start=1)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written.append(plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "loss.png"))
    rng = np.random.default_rng(0)
    routes = Routes(layer_choice_NT=rng.integers(0, 3, (3, 40)), oracle_T=rng.integers(0, 3, 40),
                    domain_T=np.repeat([0, 1, 2, 0], 10), position_T=np.tile(np.arange(10), 4))
    written += analysis.plot(analysis.analyze(routes, ["a", "b", "c"], 3), tmp_path / "analysis")
    assert len(written) == 7
    for path in written:
        assert path.read_bytes()[:8] == PNG
    assert matplotlib.get_backend() == svg_backend
