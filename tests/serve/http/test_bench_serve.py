"""bench-serve against a live server: vLLM's metric definitions on what the client saw, and the server's cache
counters over the run."""

import argparse
import asyncio

import httpx
import pytest

from serve.http import bench
from tests.serve.http.conftest import live_server, metric_value


def test_closed_loop_run_counts_every_token_and_reads_the_server_counters(engine, tmp_path):
    eng = engine
    requests = bench.workload("synthetic", 12, 8, 5, seed=0)
    with live_server(eng) as (url, state):
        before = state.loop.snapshot()["stats"]["iterations"]  # the engine thread's snapshot: never the engine
        result = asyncio.run(bench.run(url, "/v1/completions", None, requests, [0.0] * 12, 3, 60))
        iterations = state.loop.snapshot()["stats"]["iterations"] - before
        generated = metric_value(httpx.get(url + "/metrics").text, "readme:generation_tokens_total")
    assert result["completed"] == 12 and result["failed"] == 0 and result["model"] == state.model_name
    assert result["output_tokens"] == generated <= sum(m for _, m in requests)  # what the server sent
    assert result["server_cache"]["iterations"] == iterations
    for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        stats = result[name]
        assert 0 < stats["p50"] <= stats["p99"]
    assert result["ttft_ms"]["mean"] <= result["e2el_ms"]["mean"]
    table = bench.format_table(result)
    assert "TTFT" in table and "12/12 completed" in table
    assert bench.plot(result, tmp_path / "b.png").stat().st_size > 0


def test_open_loop_arrivals_and_bad_options():
    times = bench.arrival_times(200, 50.0, 1.0, seed=1)
    assert times == sorted(times) and times[0] == 0.0 and 3.0 < times[-1] < 5.0  # mean gap 1/50 s
    assert bench.arrival_times(3, float("inf"), 1.0, 0) == [0.0] * 3
    with pytest.raises(Exception, match="must be > 0"):
        bench.arrival_times(3, 0.0, 1.0, 0)
    with pytest.raises(Exception, match="--workload"):
        bench.workload("nope", 3, 4, 4, 0)
    args = argparse.Namespace(workload="synthetic", num_prompts=1, prompt_tokens=1, max_tokens=1, seed=0,
                              request_rate=1.0, burstiness=1.0, max_concurrency=0, url="http://x", endpoint="/v1/completions",
                              model=None, timeout_s=1.0)
    with pytest.raises(Exception, match="--max-concurrency"):
        bench.run_from_args(args)
