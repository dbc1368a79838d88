"""``readme-jax bench-engine`` end to end on a tiny MoE: the saved result (into folders it makes) is what
``readme-jax report`` turns into its Serving table; an unusable output path is refused before any run."""

import json

import numpy as np

from readme_jax.cli import main
from readme_jax.report import write_report
from serve.core.types import RequestSpec
from serve.sim.trace import Trace, TraceHeader, write_trace


def test_saved_result_feeds_the_report(tmp_path, capsys):
    from tests.serve.http.conftest import tiny_moe_folder

    folder = tiny_moe_folder(tmp_path / "moe")
    rng = np.random.default_rng(0)
    specs = []
    for index, n in enumerate((6, 11, 4)):
        ids = tuple(int(t) for t in rng.integers(1, 250, size=n))
        specs.append(RequestSpec(f"r{index}", 0.1 * index, tuple(int(e) for e in rng.integers(0, 4, size=n)), (1,),
                                 8, prompt_ids=ids, output_ids=(7,)))
    trace = write_trace(tmp_path / "t.jsonl", Trace(TraceHeader(4, 2, "test"), tuple(specs)))
    workdir = tmp_path / "work"
    save = workdir / "serving" / "engine.json"  # neither folder exists yet
    assert main(["bench-engine", "--model", str(folder), "--trace", str(trace), "--slots", "2",
                 "--pairs", "expert-aware/lru", "--max-new-tokens", "3", "--concurrency", "2", "--max-seqs", "2",
                 "--prefetch", "none", "--save", str(save), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(save.read_text()) == printed
    (row,) = printed["rows"]
    assert row["slots"] == 2 and row["cache"] == "lru" and row["summary"]["generated_tokens"] == 9
    md = write_report(workdir)[0].read_text()
    hit = f"{100 * row['stats']['hit_ratio']:.1f}"
    assert f"| 2 | expert-aware | lru | none | {hit} | {row['stats']['loads']} |" in md
    assert "3 requests x 3 new tokens, 2 closed-loop clients" in md


def test_an_output_path_that_cannot_be_made_is_refused_before_any_run(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # The model does not exist either: the output path is named first, so no run was started.
    assert main(["bench-engine", "--model", str(tmp_path / "no-such-model"), "--save",
                 str(blocker / "engine.json")]) != 0
    assert f"--save {blocker / 'engine.json'}: cannot create {blocker}" in capsys.readouterr().err
