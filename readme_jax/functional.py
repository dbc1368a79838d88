"""The jit boundary: pure functions of ``(graphdef, state, inputs)``.

1. ``forward``: full causal forward, logits [B, L, V].
2. ``prefill``: run left-padded prompts [B, L] into a fresh cache of S slots; returns the last
   position's logits and the cache.
3. ``decode``: an on-device ``while_loop`` that samples, feeds back and stops per sequence at EOS
   (no Python per token). The cache lives in the loop carry, so XLA updates it in place.

Left padding puts every prompt's last token in slot L-1 (L = the padded prompt length), so all sequences
of a batch write decode step t into the same slot L+t while their RoPE positions (real token counts) differ.

A Read-ME MoE generates with its pre-gating router inside the same programs (``router`` =
(router_graphdef, router_state), static graphdef): the router runs over the prompt into its own KV cache,
and each sampled token is routed one step ahead of the backbone with the router's cached decode, so the
expert of every token is known before the backbone touches it (the serving property of the paper).
"""

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from readme_jax.model import init_cache
from readme_jax.sampling import sample


@partial(jax.jit, static_argnums=0)
def forward(graphdef, state, tokens_BL, route=None):
    return nnx.merge(graphdef, state)(tokens_BL, route=route)


def prompt_positions(valid_BL):
    """RoPE positions of left-padded prompts: 0.. for real tokens (pads get 0, they are masked)."""
    return jnp.maximum(jnp.cumsum(valid_BL.astype(jnp.int32), axis=1) - 1, 0)


def _router_step(router, router_state, tokens_BL, pos_BL, kv_valid_BS, router_cache, write_index):
    """Expert ids [B, L] for new tokens and the router's updated cache (None, None without a router)."""
    if router is None:
        return None, None
    r = nnx.merge(router, router_state)
    x_BLD, router_cache = r.hidden(tokens_BL, pos_BL, kv_valid_BS, router_cache, write_index)
    return jnp.argmax(r.head(x_BLD), axis=-1).astype(jnp.int32), router_cache


@partial(jax.jit, static_argnums=(0, 4, 6))
def prefill(graphdef, state, tokens_BL, valid_BL, cache_len: int, route=None, router=None, router_state=None):
    """Returns (logits of the last slot [B, V], cache, kv_valid [B, S], lengths [B]).

    With ``router`` (a router graphdef; ``router_state`` its state) the cache is the pair (backbone cache,
    router cache) and the prompt's routes come from the router.
    """
    model = nnx.merge(graphdef, state)
    B, L = tokens_BL.shape
    cache = init_cache(model.cfg, B, cache_len)
    kv_valid_BS = jnp.zeros((B, cache_len), bool).at[:, :L].set(valid_BL)
    pos_BL = prompt_positions(valid_BL)
    if router is not None:
        r_cfg = nnx.merge(router, router_state).cfg
        route, router_cache = _router_step(router, router_state, tokens_BL, pos_BL, kv_valid_BS,
                                           init_cache(r_cfg, B, cache_len), 0)
    x_BLD, cache = model.hidden(tokens_BL, pos_BL, kv_valid_BS, cache, 0, route)
    if router is not None:
        cache = (cache, router_cache)
    logits_BV = model.head(x_BLD[:, -1:, :])[:, 0, :]
    return logits_BV, cache, kv_valid_BS, jnp.sum(valid_BL, axis=1).astype(jnp.int32)


@partial(jax.jit, static_argnums=(0, 9, 10, 13))
def decode(graphdef, state, logits_BV, cache, kv_valid_BS, lengths_B, key, sampling, max_new,
           max_new_bucket: int, greedy: bool, eos_ids=None, done_B=None, router=None, router_state=None):
    """Sample up to ``max_new`` tokens per sequence; returns (tokens [B, Y], counts [B]), Y = max_new_bucket.

    ``sampling`` = (temperature, top_k, top_p) traced scalars; ``eos_ids`` an int array (may be empty);
    ``done_B`` marks rows that must not generate (batch padding). Unused slots hold -1. With ``router``,
    ``cache`` is prefill's (backbone cache, router cache) pair.
    """
    model = nnx.merge(graphdef, state)
    temperature, top_k, top_p = sampling
    B = logits_BV.shape[0]
    prompt_len = kv_valid_BS.shape[1] - max_new_bucket
    eos_ids = jnp.zeros((0,), jnp.int32) if eos_ids is None else eos_ids
    done_B = jnp.zeros((B,), bool) if done_B is None else done_B

    def emit(t, logits_BV, key, out_BY, done_B, counts_B):
        key, sub = jax.random.split(key)
        tok_B = sample(logits_BV, sub, temperature, top_k, top_p, greedy)
        tok_B = jnp.where(done_B, -1, tok_B)
        out_BY = out_BY.at[:, t].set(tok_B)
        counts_B = counts_B + (~done_B).astype(jnp.int32)
        done_B = done_B | jnp.isin(tok_B, eos_ids) | (t + 1 >= max_new)
        return key, out_BY, done_B, counts_B, tok_B

    out_BY = jnp.full((B, max_new_bucket), -1, jnp.int32)
    key, out_BY, done_B, counts_B, tok_B = emit(0, logits_BV, key, out_BY, done_B, jnp.zeros((B,), jnp.int32))

    def cond(carry):
        t, done_B = carry[0], carry[5]
        return (t < max_new) & ~jnp.all(done_B)

    def body(carry):
        t, tok_B, cache, kv_valid_BS, key, done_B, out_BY, counts_B = carry
        slot = prompt_len + t - 1  # the token sampled at step t-1 goes into slot prompt_len+t-1
        kv_valid_BS = jax.lax.dynamic_update_slice(kv_valid_BS, jnp.ones((B, 1), bool), (0, slot))
        pos_B1 = (lengths_B + t - 1)[:, None]
        tok_B1 = jnp.maximum(tok_B, 0)[:, None]
        if router is None:
            x_B1D, cache = model.hidden(tok_B1, pos_B1, kv_valid_BS, cache, slot)
        else:  # pre-gate the token, then run the backbone with that expert
            route_B1, router_cache = _router_step(router, router_state, tok_B1, pos_B1, kv_valid_BS, cache[1],
                                                  slot)
            x_B1D, backbone_cache = model.hidden(tok_B1, pos_B1, kv_valid_BS, cache[0], slot, route_B1)
            cache = (backbone_cache, router_cache)
        logits_BV = model.head(x_B1D)[:, 0, :]
        key, out_BY, done_B, counts_B, tok_B = emit(t, logits_BV, key, out_BY, done_B, counts_B)
        return t + 1, tok_B, cache, kv_valid_BS, key, done_B, out_BY, counts_B

    carry = (jnp.int32(1), tok_B, cache, kv_valid_BS, key, done_B, out_BY, counts_B)
    carry = jax.lax.while_loop(cond, body, carry)
    return carry[6], carry[7]
