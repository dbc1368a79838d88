"""Read-ME MoE invariants: sliced == masked, all-neuron expert == dense, cached decode == forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from readme_jax import functional, refactor
from readme_jax.errors import ReadmeJaxError
from readme_jax.lm import jax_to_numpy
from readme_jax.model import init_cache
from readme_jax.moe import MoEConfig
from tests.helpers import tiny_config, tiny_model

E = 3


@pytest.fixture(scope="module")
def parts():
    cfg = tiny_config()
    dense = tiny_model(cfg, seed=1)
    pure = jax_to_numpy(nnx.to_pure_dict(nnx.split(dense)[1]))
    stats = np.random.default_rng(0).random((E, cfg.n_layers, cfg.d_ff))
    masks = refactor.domain_masks(stats, 0.5)
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(4, cfg.vocab_size, (2, 10)))
    experts = jnp.asarray(rng.integers(0, E, (2, 10)))
    return cfg, dense, pure, stats, masks, tokens, experts


def test_sliced_equals_masked(parts):
    cfg, _, pure, _, masks, tokens, experts = parts
    masked = refactor.build_moe(cfg, pure, masks, "masked")
    sliced = refactor.build_moe(cfg, pure, masks, "sliced")
    a = np.asarray(functional.forward(*nnx.split(masked), tokens, experts))
    b = np.asarray(functional.forward(*nnx.split(sliced), tokens, experts))
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("form", ["masked", "sliced"])
def test_single_expert_with_all_neurons_equals_dense(parts, form):
    cfg, dense, pure, _, _, tokens, _ = parts
    everything = np.ones((cfg.n_layers, 1, cfg.d_ff), bool)
    moe = refactor.build_moe(cfg, pure, everything, form)
    got = np.asarray(functional.forward(*nnx.split(moe), tokens, jnp.zeros_like(tokens)))
    np.testing.assert_allclose(got, np.asarray(functional.forward(*nnx.split(dense), tokens)), atol=1e-5, rtol=1e-5)


def test_masked_token_uses_exactly_its_domain_set(parts):
    """Masking expert e's complement of neurons by hand in a dense model gives the MoE's output."""
    cfg, _, pure, _, masks, tokens, _ = parts
    e = 2
    moe = refactor.build_moe(cfg, pure, masks, "masked")
    want = refactor.build_moe(cfg, pure, masks[:, e:e + 1], "masked")
    a = functional.forward(*nnx.split(moe), tokens, jnp.full(tokens.shape, e))
    b = functional.forward(*nnx.split(want), tokens, jnp.zeros_like(tokens))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_moe_cached_decode_equals_full_forward(parts):
    cfg, _, pure, _, masks, tokens, experts = parts
    moe = refactor.build_moe(cfg, pure, masks, "sliced")
    graphdef, state = nnx.split(moe)
    full = np.asarray(functional.forward(graphdef, state, tokens, experts))

    @jax.jit
    def step(state, tok, pos, kv_valid, cache, write_index, route):
        m = nnx.merge(graphdef, state)
        h, cache = m.hidden(tok, pos, kv_valid, cache, write_index, route)
        return m.head(h), cache

    S, prompt_len = 16, 4
    cache = init_cache(cfg, 2, S)
    kv_valid = jnp.zeros((2, S), bool).at[:, :prompt_len].set(True)
    pos = jnp.broadcast_to(jnp.arange(10), (2, 10))
    logits, cache = step(state, tokens[:, :prompt_len], pos[:, :prompt_len], kv_valid, cache, 0,
                         experts[:, :prompt_len])
    np.testing.assert_allclose(np.asarray(logits), full[:, :prompt_len], atol=1e-5, rtol=1e-5)
    for t in range(prompt_len, 10):
        kv_valid = kv_valid.at[:, t].set(True)
        logits, cache = step(state, tokens[:, t:t + 1], pos[:, t:t + 1], kv_valid, cache, t, experts[:, t:t + 1])
        np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, t], atol=1e-5, rtol=1e-5)


def test_moe_without_routes_is_an_error(parts):
    cfg, _, pure, _, masks, tokens, _ = parts
    with pytest.raises(ReadmeJaxError, match="needs expert ids"):
        refactor.build_moe(cfg, pure, masks, "masked")(tokens)


def test_param_counts():
    cfg = MoEConfig.from_dense(tiny_config(), n_experts=4, expert_width=32)
    dense = cfg.dense().num_params()
    mlp = 3 * cfg.d_model * cfg.d_ff * cfg.n_layers
    assert cfg.active_params() == dense - mlp // 2
    assert cfg.total_params() == dense - mlp + 4 * mlp // 2
    assert cfg.total_params(duplicated=False) == dense
    with pytest.raises(ReadmeJaxError, match="keep ratio"):
        MoEConfig.from_dense(tiny_config(), keep_ratio=1.5)
