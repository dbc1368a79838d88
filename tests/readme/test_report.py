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
