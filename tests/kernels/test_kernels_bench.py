"""Smoke run of the benchmark CLI at a tiny size (speed itself is never asserted in tests)."""

import json

from kernels import bench


def test_bench_cli_runs(capsys):
    assert bench.main(["--models", "tiny", "--tokens", "16", "--budget", "0", "--reps", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    methods = {r["method"] for r in out["rows"]}
    assert {"ours", "ragged_dot", "padded_einsum", "dense"} <= methods
    assert all(r["ms"] > 0 and r["tflops"] >= 0 for r in out["rows"])
    assert out["env"]["jax"] and out["env"]["backend"]
