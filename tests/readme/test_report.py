"""``readme-jax report``: the page carries the numbers of the work folder's JSON outputs, names what is missing
and the command that makes it, and refuses a malformed output by name."""

import json

import pytest

from readme_jax.errors import ReadmeJaxError
from readme_jax.report import write_report

DOMAINS = ["code", "legal"]


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


@pytest.fixture
def workdir(tmp_path):
    _write(tmp_path / "train" / "summary.json", {"config": {"rounds": 2, "router_steps": 3, "expert_steps": 5},
                                                 "global_steps": 16, "expert_loss_first": 4.25,
                                                 "expert_loss_last": 2.5, "router_acc_last": 0.8125})
    _write(tmp_path / "train_pruned" / "summary.json", {"config": {"rounds": 2, "router_steps": 3, "expert_steps": 5},
                                                        "baseline": "pruned", "global_steps": 10})
    ppl = {"dense": {"code": 4.0, "legal": 8.0}, "pruned_tuned": {"code": 7.5, "legal": 15.25},
           "moe_router": {"code": 7.25, "legal": 14.0}}
    _write(tmp_path / "eval" / "eval.json", {
        "perplexity": ppl, "domains": DOMAINS, "active_params": {"dense": 2e6, "moe": 1e6},
        "agreement_with_dense": {k: {"code": 0.5, "legal": 0.625} for k in ("pruned_tuned", "moe_router")},
        "kl_to_dense": {k: {"code": 0.25, "legal": 0.125} for k in ("pruned_tuned", "moe_router")}})
    (tmp_path / "train" / "loss.png").write_bytes(b"png")
    return tmp_path


def test_report_gathers_the_outputs_and_names_the_missing_ones(workdir):
    md_path, html_path = write_report(workdir)
    md, page = md_path.read_text(), html_path.read_text()
    assert "| legal | 8.00 | 15.25 | 14.00 |" in md  # perplexity rows, in the kinds' order
    assert "| mean | 6.00 | 11.38 | 10.62 |" in md
    assert "56.2% (0.188)" in md  # mean agreement and KL over the domains
    assert "2 x (0 + 5)" in md and "2 x (3 + 5)" in md  # the baseline skipped its router stages
    assert "![train loss curves](train/loss.png)" in md and "<img src='train/loss.png'" in page
    assert "No downstream evaluation" in md and "readme-jax eval --workdir" in md
    assert "No routing analysis" in md and "readme-jax analyze" in md
    assert "<td>15.25</td>" in page and page.startswith("<!doctype html>")


def test_a_malformed_output_or_a_missing_folder_is_named(workdir, tmp_path):
    (workdir / "eval" / "eval.json").write_text("{not json")
    with pytest.raises(ReadmeJaxError, match="eval.json: not a readable JSON output"):
        write_report(workdir)
    assert not (workdir / "report.md").exists()  # nothing half-written
    with pytest.raises(ReadmeJaxError, match="no such work folder"):
        write_report(tmp_path / "nope")


def test_the_chat_agreement_is_shown_when_eval_measured_it(workdir):
    path = workdir / "eval" / "eval.json"
    report = json.loads(path.read_text())
    kinds = ("pruned_tuned", "moe_router")
    report["chat"] = {"prompts_per_domain": {"code": 2, "legal": 2}, "answer_tokens": {"code": 40, "legal": 24},
                      "max_new_tokens": 20,
                      "perplexity_of_dense_answers": {"dense": {"code": 2.0, "legal": 3.0},
                                                      **{k: {"code": 4.0, "legal": 6.0} for k in kinds}},
                      "agreement_with_dense": {"pruned_tuned": {"code": 0.5, "legal": 0.25},
                                               "moe_router": {"code": 0.75, "legal": 0.5}},
                      "kl_to_dense": {k: {"code": 0.5, "legal": 1.0} for k in kinds},
                      "agreed_prefix": {k: {"code": 3.0, "legal": 2.0} for k in kinds}}
    _write(path, report)
    md = write_report(workdir)[0].read_text()
    assert "4 chat-formatted prompts" in md and "64 in all" in md
    assert "| dense |  |  |  | 2.50 |" in md
    assert "| moe_router | 62.5 | 0.750 | 2.5 | 5.00 |" in md and "| pruned_tuned | 37.5 |" in md


def _engine_row(slots, cache, hit_ratio):
    """One run as ``bench-engine --save`` writes it (the fields the report reads)."""
    latency = {"mean": 0.4, "p50": 0.35, "p95": 0.625, "p99": 0.75}
    return {"slots": slots, "batching": "expert-aware", "cache": cache, "prefetch": "none",
            "stats": {"hit_ratio": hit_ratio, "loads": 462, "bytes_moved": 40_000_000_000},
            "summary": {"unique_experts_per_batch": 1.0, "normalized_latency_s": latency,
                        "throughput_tokens_per_s": 38.75}}


def test_the_serving_table_comes_from_bench_engines_saved_result(workdir):
    md = write_report(workdir)[0].read_text()
    assert "No serving benchmark" in md and f"--save {workdir}/serving/engine.json" in md
    result = {"model": "out/demo/moe_trained", "requests": 32, "max_new_tokens": 96, "concurrency": 16,
              "device": "cpu cpu", "jax": "0.10.2", "plot": None,
              "rows": [_engine_row(2, "belady-expected", 0.583), _engine_row(3, "lru", 0.673)]}
    _write(workdir / "serving" / "engine.json", result)
    md = write_report(workdir)[0].read_text()
    assert "32 requests x 96 new tokens, 16 closed-loop clients; cpu cpu, jax 0.10.2." in md
    assert "| 2 | expert-aware | belady-expected | none | 58.3 | 462 | 40.0 | 1.00 | 350 | 625 | 38.8 |" in md
    assert "| 3 | expert-aware | lru |" in md and "No serving benchmark" not in md
    del result["rows"][1]["summary"]
    _write(workdir / "serving" / "engine.json", result)
    with pytest.raises(ReadmeJaxError, match="engine.json: not a bench-engine result"):
        write_report(workdir)
