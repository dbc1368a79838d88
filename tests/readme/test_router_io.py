"""A trained router travels inside the Read-ME folder and pre-gates ``readme_jax.load(path)``'s MoE."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import readme_jax
from readme_jax import refactor
from readme_jax.errors import ReadmeJaxError
from readme_jax.lm import jax_to_numpy
from readme_jax.moe_io import save_moe
from readme_jax.router import RouterConfig, init_router
from tests.helpers import tiny_config, tiny_model
from tests.model.test_loaders import VOCAB, tiny_tokenizer


def test_router_round_trip_and_pre_gated_logits(tmp_path):
    cfg = tiny_config(vocab_size=VOCAB, eos_ids=(258,), pad_id=256)
    pure = jax_to_numpy(nnx.to_pure_dict(nnx.split(tiny_model(cfg))[1]))
    masks = refactor.domain_masks(np.random.default_rng(3).random((3, cfg.n_layers, cfg.d_ff)), 0.5)
    rcfg = RouterConfig(vocab_size=VOCAB, n_experts=3, d_model=16, d_ff=16, n_heads=2, max_seq_len=64)
    router = init_router(rcfg, rngs=nnx.Rngs(5))
    router_pure = jax_to_numpy(nnx.to_pure_dict(nnx.state(router)))
    folder = save_moe(tmp_path / "moe", cfg, pure, masks, "abc", 0.5, tiny_tokenizer(), router=(rcfg, router_pure))

    lm = readme_jax.load(str(folder))
    ids = np.arange(4, 20)[None]
    experts = np.asarray(router(jnp.asarray(ids))).argmax(-1)
    np.testing.assert_array_equal(lm.route(ids), experts)
    want = refactor.build_moe(cfg, pure, masks, "masked")(jnp.asarray(ids), route=jnp.asarray(experts))
    np.testing.assert_allclose(lm.logits(ids), np.asarray(want), atol=1e-6)

    # Generation pre-gates every token with the router's cached decode; greedy tokens must equal the argmax
    # of full forwards over the growing sequence (the router is causal, so the prefix's routes never change).
    from readme_jax.generate import SamplingParams

    prompts = [[5, 9, 13, 17], [7, 8]]
    outs = lm.generate_ids(prompts, SamplingParams(max_new_tokens=6))
    for prompt, out in zip(prompts, outs):
        seq = list(prompt)
        for tok in out:
            assert tok == int(lm.logits([seq])[0, -1].argmax())
            seq.append(tok)
        assert len(out) == 6 or out[-1] in lm.eos_ids

    with pytest.raises(ReadmeJaxError, match="router has 2 experts"):
        save_moe(tmp_path / "bad", cfg, pure, masks, "abc", 0.5, tiny_tokenizer(),
                 router=(rcfg.replace(n_experts=2), router_pure))
    config = json.loads((folder / "config.json").read_text())
    config["readme_moe"]["router"]["d_model"] = 32
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ReadmeJaxError, match=r"router tensor 'readme_router\.[\w.]+' has shape \(16,?\)"):
        readme_jax.load(str(folder))


def test_moe_without_router_explains(tmp_path):
    cfg = tiny_config(vocab_size=VOCAB, eos_ids=(258,), pad_id=256)
    pure = jax_to_numpy(nnx.to_pure_dict(nnx.split(tiny_model(cfg))[1]))
    masks = refactor.domain_masks(np.random.default_rng(3).random((2, cfg.n_layers, cfg.d_ff)), 0.5)
    lm = readme_jax.load(str(save_moe(tmp_path / "moe", cfg, pure, masks, "ab", 0.5, tiny_tokenizer())))
    with pytest.raises(ReadmeJaxError, match="no trained router"):
        lm.route(np.arange(4, 9)[None])
    with pytest.raises(ReadmeJaxError, match="needs expert ids"):
        lm.logits(np.arange(4, 9)[None])
    with pytest.raises(ReadmeJaxError, match="needs its trained router"):
        lm.generate("hello", max_new_tokens=2)


def test_tensors_the_loader_does_not_know_are_ignored(tmp_path):
    """A folder with extra tensors (e.g. a per-layer ``idx_EX`` neuron index, which the sliced form no
    longer keeps) loads in both forms with the same logits as without them."""
    from safetensors.numpy import load_file, save_file

    cfg = tiny_config(vocab_size=VOCAB, eos_ids=(258,), pad_id=256)
    pure = jax_to_numpy(nnx.to_pure_dict(nnx.split(tiny_model(cfg))[1]))
    masks = refactor.domain_masks(np.random.default_rng(3).random((2, cfg.n_layers, cfg.d_ff)), 0.5)
    folder = save_moe(tmp_path / "moe", cfg, pure, masks, "ab", 0.5, tiny_tokenizer())
    ids, experts = np.arange(4, 12)[None], np.array([[0, 1, 1, 0, 1, 0, 0, 1]])
    want = readme_jax.load(str(folder)).logits(ids, experts)
    tensors = load_file(str(folder / "model.safetensors"))
    for n in range(cfg.n_layers):
        tensors[f"readme_moe.layers.{n}.idx_EX"] = np.stack([np.flatnonzero(m) for m in masks[n]]).astype(np.int32)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    for form in ("masked", "sliced"):
        np.testing.assert_allclose(readme_jax.load(str(folder), form=form).logits(ids, experts), want, atol=1e-5)
