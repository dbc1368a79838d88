"""bench-cache / bench-sched through the project CLI: JSON output, plots, traces, and clear errors."""

import json
import subprocess
import sys

import pytest

from readme_jax.cli import main

SMALL = ["--requests", "40", "--max-batch-tokens", "256"]


def _json(capsys, argv):
    assert main(argv) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # exactly one JSON object


def test_bench_cache_json_is_a_table4_style_result(capsys):
    result = _json(capsys, ["bench-cache", "--json", "--no-plot", "--rate", "6", "--capacities", "1,2,3", *SMALL])
    assert [row["capacity"] for row in result["rows"]] == [1, 2, 3]
    for row in result["rows"]:
        policies = row["policies"]
        assert set(policies) == {"random", "fifo", "lru", "lfu", "belady", "belady-offline"}
        best = policies["belady-offline"]["hits"]
        assert all(0.0 <= p["hit_ratio"] <= 1.0 and p["hits"] <= best for p in policies.values())
        assert policies["lru"]["bytes_moved"] == policies["lru"]["loads"] * result["cost"]["slice_bytes"] * 32
    assert result["workload"]["synthetic"]["num_requests"] == 40 and result["env"]["python"]


def test_engine_cost_terms_are_flags(capsys):
    base = _json(capsys, ["bench-sched", "--json", "--no-plot", "--rates", "6", "--policies", "expert-aware", *SMALL])
    argv = ["--prefill-token-us", "5", "--call-ms", "2", "--admit-ms", "1"]
    slow = _json(capsys, ["bench-sched", "--json", "--no-plot", "--rates", "6", "--policies", "expert-aware", *SMALL,
                          *argv])
    terms = (slow["cost"]["prefill_token_s"], slow["cost"]["call_s"], slow["cost"]["admit_s"])
    assert terms == pytest.approx((5e-6, 2e-3, 1e-3))
    assert base["cost"]["call_s"] == 0.0 and base["cost"]["prefill_token_s"] is None
    assert json.dumps(slow["runs"]) != json.dumps(base["runs"])  # the terms reach the simulated time


def test_bench_sched_text_and_plot(capsys, tmp_path):
    plot = tmp_path / "sched.png"
    argv = ["bench-sched", "--rates", "5,20", "--policies", "expert-aware,decode-first", "--plot", str(plot), *SMALL]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "expert-aware" in out and "change against decode-first" in out and "SYNTHETIC" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_sched_json_with_cache(capsys):
    argv = ["bench-sched", "--json", "--no-plot", "--rates", "8", "--cache-capacity", "3", "--prefetch", "next", *SMALL]
    result = _json(capsys, argv)
    assert {run["policy"] for run in result["runs"]} == {"expert-aware", "decode-first", "prefill-first", "fcfs"}
    for run in result["runs"]:
        assert run["requests"] == 40 and 0.0 <= run["cache"]["hit_ratio"] <= 1.0 and run["simulate_wall_s"] >= 0


def test_saved_trace_replays_to_the_same_numbers(capsys, tmp_path):
    trace = tmp_path / "w.jsonl"
    first = _json(capsys, ["bench-sched", "--json", "--no-plot", "--rates", "9", "--save-trace", str(trace), *SMALL])
    again = _json(capsys, ["bench-sched", "--json", "--no-plot", "--trace", str(trace), *SMALL[2:]])
    for a, b in zip(first["runs"], again["runs"]):
        assert a["normalized_latency_s"] == b["normalized_latency_s"]
        assert a["unique_experts_per_batch"] == b["unique_experts_per_batch"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench-cache", "--capacities", "0"], "cache capacity=0 must be between 1 and 7"),
        (["bench-cache", "--capacities", "8"], "cache capacity=8 must be between 1 and 7"),
        (["bench-cache", "--capacities", "2,x"], "--capacities '2,x': expected comma-separated integers"),
        (["bench-cache", "--max-batch-tokens", "-4"], "max_batch_tokens=-4"),
        (["bench-sched", "--policies", "expert-aware,sjf"], "unknown name 'sjf'"),
        (["bench-sched", "--cache-capacity", "9"], "cache capacity=9"),
        (["bench-sched", "--max-wait", "soon"], "--max-wait 'soon'"),
        (["bench-sched", "--call-ms", "-1"], "call_s=-0.001 must be finite and >= 0"),
    ],
)
def test_bad_flags_print_one_error_line(capsys, argv, message):
    assert main([*argv, "--no-plot", "--requests", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_bad_trace_line_is_named(capsys, tmp_path):
    trace = tmp_path / "bad.jsonl"
    trace.write_text(
        '{"format": "readme-jax-trace", "version": 1, "num_experts": 3}\n'
        '{"id": "a", "arrival_s": 0, "max_new_tokens": 4, "prompt_experts": [0], "output_experts": [3]}\n'
    )
    assert main(["bench-cache", "--trace", str(trace), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl line 2: expert id 3 in output_experts[0] out of range [0, 3)" in err
    assert main(["bench-sched", "--trace", str(trace), "--rates", "3", "--no-plot"]) == 2
    assert "bad.jsonl line 2" in capsys.readouterr().err


def test_trace_rates_rescale_arrivals_and_requests_cut_the_trace(capsys, tmp_path):
    trace = tmp_path / "w.jsonl"
    _json(capsys, ["bench-sched", "--json", "--no-plot", "--rates", "6", "--save-trace", str(trace), *SMALL])
    argv = ["bench-sched", "--json", "--no-plot", "--trace", str(trace), "--policies", "fcfs", "--requests", "30"]
    result = _json(capsys, [*argv, "--rates", "3,60"])
    assert result["workload"]["requests"] == 30 and result["workload"]["rescaled_to_rates_per_s"] == [3.0, 60.0]
    slow, fast = result["runs"]
    assert (slow["rate_per_s"], fast["rate_per_s"]) == (3.0, 60.0) and slow["requests"] == fast["requests"] == 30
    # The same 30 requests, 20 times closer together: the run is shorter and the server busier.
    assert fast["makespan_s"] < slow["makespan_s"] and fast["tokens_per_batch"] > slow["tokens_per_batch"]
    assert main([*argv, "--requests", "0"]) == 2
    assert "--requests 0 must be >= 1" in capsys.readouterr().err


def test_bench_cache_memory_limited_records_each_capacity_with_its_cache(capsys):
    argv = ["bench-cache", "--json", "--no-plot", "--rate", "20", "--capacities", "2,3", "--regime", "memory-limited"]
    result = _json(capsys, [*argv, *SMALL])
    resident = _json(capsys, ["bench-cache", "--json", "--no-plot", "--rate", "20", "--capacities", "2", *SMALL])
    assert result["regime"] == "memory-limited" and resident["regime"] == "resident"
    for row in result["rows"]:
        assert set(row["closed_loop"]) == {"random", "fifo", "lru", "lfu", "belady"}
        assert all(0.0 <= p["hit_ratio"] <= 1.0 for p in row["closed_loop"].values())
    # Misses cost whole-expert transfers, so a memory-limited server runs longer iterations with more work each.
    assert result["rows"][0]["tokens_per_batch"] > resident["rows"][0]["tokens_per_batch"]


def test_module_entry_point_prints_one_json_object():
    argv = ["-m", "readme_jax.cli", "bench-cache", "--json", "--no-plot", "--capacities", "2", "--requests", "20"]
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["bench"] == "cache"
