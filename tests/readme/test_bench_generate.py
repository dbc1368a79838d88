"""``readme-jax bench generate`` on a Read-ME folder: dense parent, sliced MoE and their ratios in one run."""

import json

import numpy as np
from flax import nnx

from readme_jax import refactor
from readme_jax.cli import main
from readme_jax.lm import jax_to_numpy
from readme_jax.moe_io import read_moe_folder, save_moe
from readme_jax.router import RouterConfig, init_router
from tests.helpers import tiny_config, tiny_model
from tests.model.test_loaders import VOCAB, tiny_tokenizer


def test_bench_generate_on_a_moe_folder(tmp_path, capsys):
    cfg = tiny_config(vocab_size=VOCAB, eos_ids=(258,), pad_id=256)
    pure = jax_to_numpy(nnx.to_pure_dict(nnx.split(tiny_model(cfg))[1]))
    masks = refactor.domain_masks(np.random.default_rng(3).random((3, cfg.n_layers, cfg.d_ff)), 0.5)
    rcfg = RouterConfig(vocab_size=VOCAB, n_experts=3, d_model=16, d_ff=16, n_heads=2, max_seq_len=cfg.max_seq_len)
    router_pure = jax_to_numpy(nnx.to_pure_dict(nnx.state(init_router(rcfg, rngs=nnx.Rngs(5)))))
    folder = save_moe(tmp_path / "moe", cfg, pure, masks, "abc", 0.5, tiny_tokenizer(), router=(rcfg, router_pure),
                      source=None)
    assert read_moe_folder(folder)["source"] is None
    assert main(["bench", "generate", "--model", str(folder), "--no-hf", "--batch", "1", "2", "--new-tokens", "5",
                 "--repeats", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "dense weights stored in the folder" in out["info"]["dense"]
    for row in out["rows"]:
        assert row["new_tokens"] == 5 and row["prompt_tokens"] > 0
        for key in ("dense_prefill_tok_s", "dense_decode_tok_s", "moe_prefill_tok_s", "moe_decode_tok_s"):
            assert row[key] > 0
        assert np.isclose(row["moe_vs_dense_decode"], row["moe_decode_tok_s"] / row["dense_decode_tok_s"])
        assert 0 <= row["moe_dense_token_agreement"] <= 1
        assert 1 <= row["moe_distinct_experts_per_step"] <= min(3, row["batch"])
    # a dense model of another shape is refused, naming the shape
    other = save_moe(tmp_path / "other", tiny_config(vocab_size=VOCAB, d_model=48, eos_ids=(258,), pad_id=256),
                     jax_to_numpy(nnx.to_pure_dict(nnx.split(tiny_model(tiny_config(vocab_size=VOCAB, d_model=48)))[1])),
                     masks, "abc", 0.5, tiny_tokenizer())
    assert main(["bench", "generate", "--model", str(folder), "--dense", str(other), "--no-hf", "--json"]) == 2
    assert "not a dense model of the MoE's shape" in capsys.readouterr().err
