"""The pre-gating router: cached decode == full forward, causality, embedding init, sizes, cost, config errors."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from readme_jax.config import LlamaConfig
from readme_jax.errors import ReadmeJaxError
from readme_jax.model import init_cache
from readme_jax.router import (Router, RouterConfig, backbone_flops_per_token, flop_ratio, init_router, route,
                               router_flops_per_token)

SMOLLM2_135M = LlamaConfig(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536,
                           max_seq_len=8192, tie_embeddings=True)
LLAMA2_7B = LlamaConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, d_ff=11008,
                        max_seq_len=4096)


def tiny_router_config(**overrides) -> RouterConfig:
    base = dict(vocab_size=97, n_experts=4, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=64)
    return RouterConfig(**{**base, **overrides})


def rngs(seed: int) -> nnx.Rngs:
    # RBG keys: XLA compiles their per-shape init draws several times faster than threefry's.
    return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def param_count(module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


@pytest.fixture(scope="module")
def code_router():
    """The reference code's design (SiLU MLP, biases, unscaled scores), 2 layers so the cache spans layers."""
    return init_router(tiny_router_config(), rngs=rngs(0))


@pytest.fixture(scope="module")
def paper_router():
    """The paper's wording instead: gated SwiGLU MLP, no biases, 1/sqrt(K) scaling."""
    return init_router(tiny_router_config(mlp="swiglu", bias=False, attn_scale="sqrt"), rngs=rngs(1))


@partial(jax.jit, static_argnums=0, donate_argnums=5)
def cached_logits(graphdef, state, tokens_BL, pos_BL, kv_valid_BS, cache, write_index):
    """L new tokens through the router's KV cache, as functional.prefill / decode run it: (logits, cache)."""
    router = nnx.merge(graphdef, state)
    x_BLD, cache = router.hidden(tokens_BL, pos_BL, kv_valid_BS, cache, write_index)
    return router.head(x_BLD), cache


@pytest.mark.parametrize("which", ["code_router", "paper_router"])
def test_cached_decode_matches_full_forward(which, request):
    router = request.getfixturevalue(which)
    cfg = router.cfg
    graphdef, state = nnx.split(router)
    B, L, prompt_len, pad = 2, 11, 5, 3  # row 1 is left-padded by `pad` inside the prompt chunk
    # Inputs are built in numpy: every eager jnp op is a separate small compile.
    tokens_BL = np.random.default_rng(1).integers(0, cfg.vocab_size, (B, L), dtype=np.int32)
    valid_BL = np.ones((B, L), bool)
    valid_BL[1, :pad] = False
    pos_BL = np.maximum(np.cumsum(valid_BL, axis=1, dtype=np.int32) - 1, 0)  # as functional.prompt_positions
    full_BLE = np.asarray(route(graphdef, state, tokens_BL, pos_BL, valid_BL))
    assert full_BLE.dtype == np.float32 and full_BLE.shape == (B, L, cfg.n_experts)

    S = 16  # cache longer than the sequence: the unwritten tail must stay masked
    kv_valid_BS = np.zeros((B, S), bool)
    kv_valid_BS[:, :prompt_len] = valid_BL[:, :prompt_len]
    cache = init_cache(cfg, B, S)
    prompt_BLE, cache = cached_logits(graphdef, state, tokens_BL[:, :prompt_len], pos_BL[:, :prompt_len],
                                      kv_valid_BS, cache, 0)
    steps = [np.asarray(prompt_BLE)]
    for t in range(prompt_len, L):
        kv_valid_BS[:, t] = True
        step_B1E, cache = cached_logits(graphdef, state, tokens_BL[:, t:t + 1], pos_BL[:, t:t + 1], kv_valid_BS,
                                        cache, t)
        steps.append(np.asarray(step_B1E))
    cached_BLE = np.concatenate(steps, axis=1)
    np.testing.assert_allclose(cached_BLE[0], full_BLE[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(cached_BLE[1, pad:], full_BLE[1, pad:], atol=1e-5, rtol=1e-5)


@partial(jax.jit, static_argnums=(0, 3))
def grad_of_logits_at(graphdef, state, tokens_BL, t: int):
    """d(sum of the expert logits at position t) / d(input embeddings) [B, L, D]."""
    router = nnx.merge(graphdef, state)
    B, L = tokens_BL.shape
    pos_BL, valid_BL = jnp.broadcast_to(jnp.arange(L), (B, L)), jnp.ones((B, L), bool)

    def logits_at_t(x_BLD):
        h_BLD, _ = router.hidden(tokens_BL, pos_BL, valid_BL, x_BLD=x_BLD)
        return router.head(h_BLD)[:, t, :].sum()

    return jax.grad(logits_at_t)(router.embed_VD[...][tokens_BL])


def test_causal_by_gradient_and_perturbation(code_router):
    cfg = code_router.cfg
    graphdef, state = nnx.split(code_router)
    B, L, t = 2, 11, 4  # the cache test's shapes: `route` is compiled once
    tokens_BL = np.random.default_rng(3).integers(0, cfg.vocab_size, (B, L), dtype=np.int32)
    pos_BL, valid_BL = np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)), np.ones((B, L), bool)
    per_position_L = np.abs(np.asarray(grad_of_logits_at(graphdef, state, tokens_BL, t))).sum(axis=(0, 2))
    assert np.all(per_position_L[t + 1:] == 0), per_position_L
    assert np.all(per_position_L[:t + 1] > 0), per_position_L

    changed_BL = tokens_BL.copy()
    changed_BL[:, t + 1:] = (changed_BL[:, t + 1:] + 1) % cfg.vocab_size
    before_BLE = np.asarray(route(graphdef, state, tokens_BL, pos_BL, valid_BL))
    after_BLE = np.asarray(route(graphdef, state, changed_BL, pos_BL, valid_BL))
    np.testing.assert_array_equal(after_BLE[:, :t + 1], before_BLE[:, :t + 1])
    assert not np.allclose(after_BLE[:, t + 1:], before_BLE[:, t + 1:])


def test_embedding_init_copies_first_llm_columns(code_router):
    cfg = code_router.cfg
    llm_embed_VD = np.random.default_rng(4).standard_normal((cfg.vocab_size, 48), dtype=np.float32)
    router = init_router(cfg, nnx.Param(llm_embed_VD), rngs=rngs(0))
    np.testing.assert_array_equal(router.embed_VD[...], llm_embed_VD[:, :cfg.d_model])
    exact = init_router(cfg, llm_embed_VD[:, :cfg.d_model], rngs=rngs(0))  # width == d_model is fine
    np.testing.assert_array_equal(exact.embed_VD[...], router.embed_VD[...])
    with pytest.raises(ReadmeJaxError, match="exceeds the LLM embedding width"):
        init_router(cfg, llm_embed_VD[:, :16], rngs=rngs(0))
    with pytest.raises(ReadmeJaxError, match="vocab_size=97"):
        init_router(cfg, llm_embed_VD[:50], rngs=rngs(0))


def test_paper_preset_has_the_code_designs_17965063_params():
    cfg = RouterConfig.paper()
    shape = (cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff, cfg.n_experts)
    assert shape == (32000, 512, 1, 4, 512, 7)
    assert (cfg.mlp, cfg.bias, cfg.attn_scale, cfg.head_dim) == ("silu", True, "none", 128)
    abstract = nnx.eval_shape(lambda: Router(cfg, rngs=nnx.Rngs(0)))  # no 16 M-float allocation
    assert param_count(abstract) == cfg.num_params() == 17_965_063
    # A true SwiGLU MLP would be 18.23 M (paper.md §2.3): "18.0 M" is the SiLU design.
    assert RouterConfig.paper(mlp="swiglu").num_params() == 18_227_719


@pytest.mark.parametrize("bias", [True, False])
def test_swiglu_matches_its_param_formula(bias):
    cfg = tiny_router_config(mlp="swiglu", bias=bias)
    router = nnx.eval_shape(lambda: Router(cfg, rngs=nnx.Rngs(0)))  # the SwiGLU forward runs in the cache test
    V, D, F, E, N = cfg.vocab_size, cfg.d_model, cfg.d_ff, cfg.n_experts, cfg.n_layers
    b = int(bias)
    per_layer = 4 * D * D + 3 * D * F + 2 * D + b * (4 * D + 2 * F + D)  # q/k/v/o, gate/up/down, 2 norms, biases
    assert param_count(router) == cfg.num_params() == V * D + N * per_layer + D + D * E + b * E


def test_default_router_for_smollm2_is_within_two_percent_of_backbone_flops():
    cfg = RouterConfig.for_backbone(SMOLLM2_135M, n_experts=7)
    assert (cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.head_dim, cfg.vocab_size) == (256, 256, 4, 64, 49152)
    assert cfg.num_params() == 12_980_231
    for ctx in (0, 512, 2048, SMOLLM2_135M.max_seq_len):
        assert flop_ratio(cfg, SMOLLM2_135M, ctx) <= 0.02
        # The refactored backbone's token uses one expert of about half the dense MLP: still within budget.
        assert flop_ratio(cfg, SMOLLM2_135M, ctx, active_d_ff=SMOLLM2_135M.d_ff // 2) <= 0.02
    # Hand count at context 0: 30 x (q,o 2*576*576 + k,v 2*576*192 + MLP 3*576*1536) + head 576*49152, x2.
    assert backbone_flops_per_token(SMOLLM2_135M, 0) == 2 * (30 * 3_538_944 + 576 * 49152)
    assert router_flops_per_token(cfg, 0) == 2 * (6 * 256 * 256 + 256 * 7)
    # Table 1's width would break the budget at SmolLM2's full context; Llama-2-7B gets Table 1's router.
    assert flop_ratio(cfg.replace(d_model=512, d_ff=512), SMOLLM2_135M, SMOLLM2_135M.max_seq_len) > 0.02
    paper_like = RouterConfig.for_backbone(LLAMA2_7B)
    assert paper_like.num_params() == RouterConfig.paper().num_params()
    assert RouterConfig.for_backbone(SMOLLM2_135M, d_model=128).d_model == 128
    with pytest.raises(ReadmeJaxError, match="no router width"):
        RouterConfig.for_backbone(SMOLLM2_135M, budget=1e-4)


def test_router_rope_base_follows_the_backbone_unless_set():
    """The reference code builds the router's rotary embedding from the backbone's config."""
    backbone = SMOLLM2_135M.replace(rope_theta=1e5)  # SmolLM2's real base
    assert RouterConfig.for_backbone(backbone).rope_theta == backbone.rope_theta
    assert RouterConfig.for_backbone(LLAMA2_7B.replace(rope_theta=5e5)).rope_theta == 5e5
    assert RouterConfig.for_backbone(backbone, rope_theta=1e4).rope_theta == 1e4


@pytest.mark.parametrize("overrides, message", [
    (dict(d_model=30), "not divisible by n_heads"),
    (dict(d_model=12, n_heads=4), "must be even for RoPE"),
    (dict(n_experts=0), "n_experts=0 must be positive"),
    (dict(mlp="gelu"), "mlp='gelu'"),
    (dict(attn_scale="half"), "attn_scale='half'"),
    (dict(dtype="float16"), "dtype='float16'"),
    (dict(rms_eps=0.0), "must be > 0"),
])
def test_bad_config_errors(overrides, message):
    with pytest.raises(ReadmeJaxError, match=message):
        tiny_router_config(**overrides)
