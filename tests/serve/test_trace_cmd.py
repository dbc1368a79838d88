"""``readme-jax trace``: held-out text of a tiny MoE folder becomes a trace that serve.sim.trace reads back."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import readme_jax
from readme_jax import oracle, refactor
from serve.routing import tracegen as trace_cmd
from readme_jax.cli import main
from readme_jax.data import fixture_source
from readme_jax.errors import ReadmeJaxError
from readme_jax.lm import jax_to_numpy
from readme_jax.moe_io import read_moe_folder, save_moe
from readme_jax.router import RouterConfig, init_router
from readme_jax.weights import build_model
from serve.sim.trace import read_trace, trace_lines, write_trace
from serve.sim.workload import repeat_rate
from tests.helpers import tiny_config, tiny_model
from tests.model.test_loaders import VOCAB, tiny_tokenizer

NAMES = ("code", "legal", "quotes")  # fixture domains, one expert each
SMALL = dict(num_requests=24, rate=5.0, seqs_per_domain=3, doc_chars=300, batch_size=2, progress=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(folder with a trained router, folder without one): same tiny dense weights and masks."""
    root = tmp_path_factory.mktemp("trace")
    cfg = tiny_config(vocab_size=VOCAB, eos_ids=(258,), pad_id=256)
    pure = jax_to_numpy(nnx.to_pure_dict(nnx.split(tiny_model(cfg))[1]))
    masks_NEF = refactor.domain_masks(np.random.default_rng(3).random((3, cfg.n_layers, cfg.d_ff)), 0.5)
    rcfg = RouterConfig(vocab_size=VOCAB, n_experts=3, d_model=16, d_ff=16, n_heads=2, max_seq_len=64)
    router_pure = jax_to_numpy(nnx.to_pure_dict(nnx.state(init_router(rcfg, rngs=nnx.Rngs(5)))))
    routed = save_moe(root / "routed", cfg, pure, masks_NEF, NAMES, 0.5, tiny_tokenizer(), router=(rcfg, router_pure))
    plain = save_moe(root / "plain", cfg, pure, masks_NEF, NAMES, 0.5, tiny_tokenizer())
    return routed, plain


def _domains():
    return fixture_source().select(list(NAMES))


def _make(folder, routing=None, **overrides):
    notes = []
    options = {**SMALL, **overrides}
    trace, summary = trace_cmd.make_trace(folder, routing, domains=_domains(), log=notes.append, **options)
    return trace, summary, notes


def test_router_trace_reads_back_and_equals_moelm_route(folders, tmp_path):
    routed, _ = folders
    trace, summary, notes = _make(routed)  # default routing: the folder has a router
    assert notes == [] and trace.header.source == "router" and summary["routing"] == "router"
    path = write_trace(tmp_path / "t.jsonl", trace)
    assert [p.name for p in tmp_path.iterdir()] == ["t.jsonl"]  # no temp file left behind
    back = read_trace(path)
    assert back == trace and back.header.num_experts == 3 and back.header.num_layers == 2
    meta = back.header.meta
    assert meta["routing"] == "router" and meta["requests"] == 24 and meta["domains"] == list(NAMES)
    assert meta["text_reused"] == (meta["requests_reusing_text"] > 0)
    assert summary["requests"] == 24 and summary["temporal_locality"] == pytest.approx(repeat_rate(list(back.requests)))
    assert sum(summary["expert_histogram"]) == summary["tokens"]

    lm = readme_jax.load(str(routed))
    for spec in back.requests[:6]:  # the router is causal: routing the request's own text gives the same experts
        ids = spec.prompt_ids + spec.output_ids
        assert len(ids) <= 64  # the router's context
        np.testing.assert_array_equal(lm.route(np.asarray(ids)[None])[0], spec.prompt_experts + spec.output_experts)
        assert spec.request_id.startswith(spec.meta["domain"] + "-") and spec.max_new_tokens == 512
    arrivals = [s.arrival_s for s in back.requests]
    assert arrivals == sorted(arrivals) and arrivals[0] > 0


def test_same_seed_same_trace_other_seed_differs(folders):
    routed, _ = folders
    first = list(trace_lines(_make(routed, "domain", seed=7)[0]))
    assert list(trace_lines(_make(routed, "domain", seed=7)[0])) == first
    assert list(trace_lines(_make(routed, "domain", seed=8)[0])) != first


def test_domain_routing_gives_every_token_its_domain(folders):
    trace, summary, _ = _make(folders[0], "domain", num_requests=40)
    for spec in trace.requests:
        expert = NAMES.index(spec.meta["domain"])
        assert set(spec.prompt_experts + spec.output_experts) == {expert}
    assert summary["temporal_locality"] == 1.0 and summary["domain_expert_agreement"] == 1.0
    # 40 requests over 3 domains x 3 sequences: text is reused, and the header says so.
    assert trace.header.meta["text_reused"] and trace.header.meta["sequences"] == 9


def test_no_router_falls_back_to_the_oracle(folders):
    _, plain = folders
    trace, _, notes = _make(plain, num_requests=6)
    assert trace.header.source == "oracle" and len(notes) == 1 and "no trained router" in notes[0]
    parts = read_moe_folder(plain)
    graphdef, state = nnx.split(build_model(parts["cfg"], parts["dense_pure"]))
    k = int(parts["masks_NEF"][0, 0].sum())
    for spec in trace.requests[:3]:
        ids = jnp.asarray([spec.prompt_ids + spec.output_ids])
        _, overlap = oracle.teacher_step(graphdef, state, ids, parts["masks_NEF"], k)
        want = np.asarray(oracle.oracle_choices(overlap)[1])[0]
        np.testing.assert_array_equal(want, spec.prompt_experts + spec.output_experts)
    with pytest.raises(ReadmeJaxError, match="--routing router: .* has no trained router"):
        _make(plain, "router")


def test_text_pieces_are_whole_lines_within_the_limit():
    text = "ab\ncdef\n\nghijklmnop\nq\n"
    pieces = trace_cmd.text_pieces(text, 6)
    assert all(len(p) <= 6 and text[o:].startswith(p) for o, p in pieces)
    assert [p for _, p in pieces] == ["ab\n", "cdef\n\n", "ghijkl", "q\n"]  # a long line is cut
    assert trace_cmd.text_pieces(text, 0) == [(0, text)]


def test_cli_json_end_to_end(folders, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("readme_jax.corpus_blocks.select_domains", lambda names: _domains().select(list(names)))
    out = tmp_path / "cli.jsonl"
    argv = ["trace", "--moe", str(folders[0]), "--routing", "domain", "--requests", "5", "--seqs-per-domain", "2",
            "--doc-chars", "200", "--out", str(out), "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["requests"] == 5 and summary["path"] == str(out) and len(read_trace(out).requests) == 5


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--routing", "magic"], "unknown routing 'magic'; choose one of router, oracle, domain"),
        (["--requests", "0"], "--requests=0 must be a positive integer"),
        (["--rate", "-1"], "--rate=-1.0 must be a finite number > 0"),
        (["--seqs-per-domain", "0"], "--seqs-per-domain=0 must be a positive integer"),
        (["--doc-chars", "-5"], "--doc-chars=-5 must be an integer >= 0"),
    ],
)
def test_bad_options_give_one_error_line(folders, capsys, extra, message):
    assert main(["trace", "--moe", str(folders[0]), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_missing_folder_is_named(tmp_path, capsys):
    assert main(["trace", "--workdir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nowhere' / 'moe'}: no Read-ME MoE folder" in err
