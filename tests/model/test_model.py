"""Invariants of the dense model on a tiny random config."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from readme_jax import functional, layers
from readme_jax.model import init_cache
from tests.helpers import tiny_config, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_causality_by_gradient(model):
    """d logits[t] / d x[s] is exactly zero for every s > t."""
    cfg = model.cfg
    L, t = 8, 3
    x_1LD = jax.random.normal(jax.random.key(1), (1, L, cfg.d_model))
    pos = jnp.arange(L)[None]

    def logit_sum_at_t(x):
        h, _ = model.hidden(jnp.zeros((1, L), jnp.int32), pos, jnp.ones((1, L), bool), x_BLD=x)
        return model.head(h)[0, t].sum()

    grad_LD = jax.jit(jax.grad(logit_sum_at_t))(x_1LD)[0]
    assert np.all(np.asarray(grad_LD[t + 1:]) == 0.0)
    assert np.all(np.abs(np.asarray(grad_LD[: t + 1])).sum(-1) > 0)


def test_cached_decode_equals_full_forward(model):
    """Prefill a prefix into the cache, then feed one token at a time: same logits as one forward."""
    cfg = model.cfg
    tokens = jax.random.randint(jax.random.key(2), (2, 12), 4, cfg.vocab_size)
    full = np.asarray(model(tokens))
    prompt_len, S = 5, 16
    cache = init_cache(cfg, 2, S)
    kv_valid = jnp.zeros((2, S), bool).at[:, :prompt_len].set(True)
    pos = jnp.broadcast_to(jnp.arange(12), (2, 12))
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, tok, pos, kv_valid, cache, write_index):
        m = nnx.merge(graphdef, state)
        h, cache = m.hidden(tok, pos, kv_valid, cache, write_index)
        return m.head(h), cache

    logits, cache = step(state, tokens[:, :prompt_len], pos[:, :prompt_len], kv_valid, cache, 0)
    np.testing.assert_allclose(np.asarray(logits), full[:, :prompt_len], atol=1e-5, rtol=1e-5)
    for t in range(prompt_len, 12):  # write_index is traced: one compile for all decode steps
        kv_valid = kv_valid.at[:, t].set(True)
        logits, cache = step(state, tokens[:, t:t + 1], pos[:, t:t + 1], kv_valid, cache, t)
        np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, t], atol=1e-5, rtol=1e-5)


def test_packed_prefill_equals_each_prompt_alone(model):
    """Prompts packed into one row give each prompt's logits and cache rows exactly as alone (and as the full
    forward): the block-diagonal mask keeps them apart, and padding costs no compute."""
    graphdef, state = nnx.split(model)
    short, long = [5, 9, 11, 20], list(range(30, 43))
    slots, cache_len = 16, 32

    def run(prompts, total, batch):
        packing = functional.pack(prompts, total, batch, slots, cache_len, pad_id=0)
        logits, cache, missing = functional.prefill(graphdef, state, packing, batch, cache_len)
        assert int(missing) == -1
        return np.asarray(logits), cache, packing

    both, cache, packing = run([short, long], 32, 2)
    assert packing.kv_valid_BS.sum(1).tolist() == [4, 13] and packing.kv_valid_BS[1, slots - 13:slots].all()
    for row, prompt in enumerate((short, long)):
        alone, alone_cache, _ = run([prompt], 16, 1)
        np.testing.assert_allclose(both[row], alone[0], atol=1e-5, rtol=1e-5)
        full = np.asarray(model(jnp.asarray([prompt])))[0, -1]
        np.testing.assert_allclose(both[row], full, atol=1e-5, rtol=1e-5)
        for (k, v), (k1, v1) in zip(cache, alone_cache):
            np.testing.assert_allclose(np.asarray(k[row]), np.asarray(k1[0]), atol=1e-6)
            np.testing.assert_allclose(np.asarray(v[row]), np.asarray(v1[0]), atol=1e-6)
    # slots that hold no prompt token stay empty (padding tokens are dropped, not written)
    assert not np.asarray(cache[0][0][0, :, : slots - 4]).any()


def test_gqa_equals_repeated_kv_heads():
    """GQA attention == multi-head attention with each KV head repeated Q times."""
    B, L, H, G, K = 2, 5, 4, 2, 8
    keys = jax.random.split(jax.random.key(3), 3)
    q = jax.random.normal(keys[0], (B, L, H, K))
    k = jax.random.normal(keys[1], (B, G, L, K))
    v = jax.random.normal(keys[2], (B, G, L, K))
    mask = layers.causal_mask(jnp.arange(L), jnp.ones((B, L), bool))
    out = layers.attention(q, k, v, mask, K ** -0.5)
    k_rep, v_rep = jnp.repeat(k, H // G, axis=1), jnp.repeat(v, H // G, axis=1)
    scores = jnp.einsum("BLHK,BHSK->BHLS", q, k_rep) * K ** -0.5
    scores = jnp.where(mask[:, None], scores, -jnp.inf)
    ref = jnp.einsum("BHLS,BHSK->BLHK", jax.nn.softmax(scores, -1), v_rep)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)


def test_rope_matches_complex_rotation():
    """Rotate-half RoPE == multiplying (x_i, x_{i+K/2}) pairs by e^{i * pos * freq}."""
    K = 8
    x = jax.random.normal(jax.random.key(4), (1, 3, 1, K))
    pos = jnp.array([[0, 1, 7]])
    inv = layers.rope_inv_freq(K, 10000.0)
    cos, sin = layers.rope_cos_sin(pos, inv)
    out = np.asarray(layers.apply_rope(x, cos, sin))
    z = np.asarray(x[..., : K // 2]) + 1j * np.asarray(x[..., K // 2:])
    z = z * np.exp(1j * np.asarray(pos)[..., None, None] * np.asarray(inv))
    np.testing.assert_allclose(out, np.concatenate([z.real, z.imag], -1), atol=1e-5)


def test_llama3_rope_scaling_keeps_high_frequencies():
    inv = np.asarray(layers.rope_inv_freq(64, 500000.0))
    scaled = np.asarray(layers.rope_inv_freq(64, 500000.0, "llama3", 8.0, 1.0, 4.0, 8192))
    assert scaled[0] == pytest.approx(inv[0])  # shortest wavelength untouched
    assert scaled[-1] == pytest.approx(inv[-1] / 8.0)  # longest slowed by the factor


def test_bf16_parameters_run_and_track_fp32(model):
    cfg = model.cfg.replace(dtype="bfloat16")
    graphdef, state = nnx.split(model)
    bf16_state = jax.tree.map(lambda a: a.astype(jnp.bfloat16), state)
    tokens = jnp.asarray([[5, 6, 7, 8, 9]])
    ref = np.asarray(model(tokens))
    m16 = nnx.merge(graphdef, bf16_state)
    object.__setattr__(m16, "cfg", cfg)
    out = np.asarray(m16(tokens))
    assert out.dtype == np.float32
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max() + 0.05


def test_tied_embeddings_use_embedding_as_head():
    m = tiny_model(tiny_config(tie_embeddings=True))
    assert not hasattr(m, "w_head_DV")
    h = jax.random.normal(jax.random.key(5), (1, 2, m.cfg.d_model))
    np.testing.assert_allclose(np.asarray(m.head(h)), np.asarray(h @ m.embed_VD[...].T), atol=1e-5)


def test_lm_logits_buckets_lengths_and_equals_the_forward(model):
    """LM.logits pads to a length bucket (and batch to a power of two): a new length in the same bucket reuses
    the compiled forward, and the padding never changes the real positions' logits (causal)."""
    import types

    from readme_jax.lm import LM

    lm = LM(model, types.SimpleNamespace(pad_id=0))
    ids = np.random.default_rng(7).integers(4, model.cfg.vocab_size, (3, 13))
    got = lm.logits(ids)
    assert got.shape == (3, 13, model.cfg.vocab_size)
    np.testing.assert_allclose(got, np.asarray(model(jnp.asarray(ids))), atol=1e-5, rtol=1e-5)
    compiled = functional.forward._cache_size()
    lm.logits(ids[:, :11])  # [3, 11] -> the same [4, 16] bucket
    assert functional.forward._cache_size() == compiled
    lm.logits(ids[:1, :15])  # [1, 15] -> [1, 16]: a new batch bucket
    lm.logits(ids[:1, :3])
    assert functional.forward._cache_size() == compiled + 1
