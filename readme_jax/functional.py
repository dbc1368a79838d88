"""The jit boundary: pure functions of ``(graphdef, state, inputs)``.

1. ``forward``: full causal forward, logits [B, L, V].
2. ``prefill``: the prompts of a batch packed end to end into ONE row of T tokens (``Packing``), run with a
   block-diagonal causal mask, so no compute is spent on padding; each prompt's keys and values are scattered
   into its own row of a fresh cache of S slots, right-aligned to ``prompt_slots`` (the longest prompt's bucket).
   Returns the last position's logits of every prompt and the cache.
3. ``decode``: an on-device ``while_loop`` that samples, feeds back and stops per sequence at EOS
   (no Python per token). The cache is donated and lives in the loop carry, so XLA updates it in place.

Right-aligning every prompt to ``prompt_slots`` puts every prompt's last token in slot prompt_slots-1, so all
sequences of a batch write decode step t into the same slot prompt_slots+t while their RoPE positions (real
token counts) differ.

A Read-ME MoE generates with its pre-gating router inside the same programs (``router`` =
(router_graphdef, router_state), static graphdef): the router runs over the prompt into its own KV cache,
and each sampled token is routed one step ahead of the backbone with the router's cached decode, so the
expert of every token is known before the backbone touches it (the serving property of the paper). With a
sliced MoE whose slots hold only some experts, a route to a non-resident expert stops generation and is
reported (``missing`` = that expert id, -1 when none): ``readme_jax.generate`` turns it into an error.
"""

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from readme_jax.layers import PackedWrite
from readme_jax.model import init_cache
from readme_jax.sampling import sample


@partial(jax.jit, static_argnums=0)
def forward(graphdef, state, tokens_BL, route=None):
    return nnx.merge(graphdef, state)(tokens_BL, route=route)


@dataclasses.dataclass(frozen=True)
class Packing:
    """B prompts packed into one row of T tokens (host numpy; ``pack`` builds it)."""

    tokens_1T: np.ndarray  # int32, the prompts end to end, then pad_id
    pos_1T: np.ndarray  # int32, RoPE position of each token inside its own prompt
    seg_T: np.ndarray  # int32, prompt index of each token, -1 for padding
    row_T: np.ndarray  # int32, cache row of each token (B for padding: the scatter drops it)
    slot_T: np.ndarray  # int32, cache slot of each token: prompt b's tokens end at slot prompt_slots-1
    last_B: np.ndarray  # int32, packed index of each prompt's last token (0 for batch-padding rows)
    kv_valid_BS: np.ndarray  # bool [B, S], the slots that hold prompt tokens


jax.tree_util.register_dataclass(Packing, data_fields=[f.name for f in dataclasses.fields(Packing)], meta_fields=[])


def pack(prompts: list[list[int]], total: int, batch: int, prompt_slots: int, cache_len: int,
         pad_id: int) -> Packing:
    """Pack ``prompts`` into ``total`` positions for a cache of ``batch`` rows x ``cache_len`` slots."""
    tokens = np.full((1, total), pad_id, np.int32)
    pos = np.zeros((1, total), np.int32)
    seg = np.full(total, -1, np.int32)
    row = np.full(total, batch, np.int32)
    slot = np.zeros(total, np.int32)
    last = np.zeros(batch, np.int32)
    valid = np.zeros((batch, cache_len), bool)
    at = 0
    for b, ids in enumerate(prompts):
        n = len(ids)
        tokens[0, at:at + n], pos[0, at:at + n], seg[at:at + n], row[at:at + n] = ids, np.arange(n), b, b
        slot[at:at + n] = np.arange(prompt_slots - n, prompt_slots)
        valid[b, prompt_slots - n:prompt_slots] = True
        last[b] = at + n - 1
        at += n
    return Packing(tokens, pos, seg, row, slot, last, valid)


def packed_mask(seg_T):
    """[1, T, T]: token i sees token j of the same prompt at or before it (padding sees nothing)."""
    T = seg_T.shape[0]
    same = (seg_T[:, None] == seg_T[None, :]) & (seg_T[None, :] >= 0)
    return (same & (jnp.arange(T)[None, :] <= jnp.arange(T)[:, None]))[None]


def _missing_expert(model, expert_id, live):
    """The first expert id among ``live`` tokens that holds no slot, else -1 (the masked form: always -1)."""
    if getattr(model, "resident", None) is None:
        return jnp.int32(-1)
    absent = live & ~model.resident(expert_id)
    return jnp.where(jnp.any(absent), expert_id.reshape(-1)[jnp.argmax(absent.reshape(-1))], -1).astype(jnp.int32)


def _router_route(router, router_state, tokens_BL, pos_BL, kv_valid_BS, router_cache, write_index, mask_BLS=None):
    """Expert ids [B, L] for new tokens and the router's updated cache."""
    r = nnx.merge(router, router_state)
    x_BLD, router_cache = r.hidden(tokens_BL, pos_BL, kv_valid_BS, router_cache, write_index, mask_BLS=mask_BLS)
    return jnp.argmax(r.head(x_BLD), axis=-1).astype(jnp.int32), router_cache


@partial(jax.jit, static_argnums=(0, 3, 4, 6))
def prefill(graphdef, state, packing, batch: int, cache_len: int, route=None, router=None, router_state=None):
    """Returns (logits of each prompt's last token [B, V], cache, missing expert or -1).

    ``packing``: a ``Packing`` (its arrays; ``kv_valid_BS`` is not used here). With ``router`` (a router
    graphdef; ``router_state`` its state) the cache is the pair (backbone cache, router cache) and the prompts'
    routes come from the router; otherwise ``route`` gives them ([1, T] expert ids) or the model is dense.
    """
    model = nnx.merge(graphdef, state)
    tokens_1T, pos_1T, seg_T = packing.tokens_1T, packing.pos_1T, packing.seg_T
    mask_1TT = packed_mask(seg_T)
    write = PackedWrite(packing.row_T, packing.slot_T)
    cache = init_cache(model.cfg, batch, cache_len)
    missing = jnp.int32(-1)
    if router is not None:
        r_cfg = nnx.merge(router, router_state).cfg
        route, router_cache = _router_route(router, router_state, tokens_1T, pos_1T, None,
                                            init_cache(r_cfg, batch, cache_len), write, mask_1TT)
    if route is not None:
        missing = _missing_expert(model, route, (seg_T >= 0)[None])
    x_1TD, cache = model.hidden(tokens_1T, pos_1T, None, cache, write, route, mask_BLS=mask_1TT)
    if router is not None:
        cache = (cache, router_cache)
    logits_BV = model.head(x_1TD[:, packing.last_B, :])[0]
    return logits_BV, cache, missing


@partial(jax.jit, static_argnums=(0, 9, 10, 13), donate_argnums=(3,))
def decode(graphdef, state, logits_BV, cache, kv_valid_BS, lengths_B, key, sampling, max_new,
           max_new_bucket: int, greedy: bool, eos_ids=None, done_B=None, router=None, router_state=None):
    """Sample up to ``max_new`` tokens per sequence; returns (tokens [B, Y], counts [B], missing, the final
    cache), Y = max_new_bucket.

    ``sampling`` = (temperature, top_k, top_p) traced scalars; ``eos_ids`` an int array (may be empty);
    ``done_B`` marks rows that must not generate (batch padding). Unused slots hold -1. With ``router``,
    ``cache`` is prefill's (backbone cache, router cache) pair. ``cache`` is donated and comes back as the last
    output (the same buffers, so the loop never copies it); do not reuse the one passed in.
    ``missing``: the first routed expert that holds no slot (generation stopped there), or -1.
    """
    model = nnx.merge(graphdef, state)
    temperature, top_k, top_p = sampling
    B = logits_BV.shape[0]
    prompt_slots = kv_valid_BS.shape[1] - max_new_bucket
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
        t, done_B, missing = carry[0], carry[5], carry[8]
        return (t < max_new) & ~jnp.all(done_B) & (missing < 0)

    def body(carry):
        t, tok_B, cache, kv_valid_BS, key, done_B, out_BY, counts_B, missing = carry
        slot = prompt_slots + t - 1  # the token sampled at step t-1 goes into slot prompt_slots+t-1
        kv_valid_BS = jax.lax.dynamic_update_slice(kv_valid_BS, jnp.ones((B, 1), bool), (0, slot))
        pos_B1 = (lengths_B + t - 1)[:, None]
        tok_B1 = jnp.maximum(tok_B, 0)[:, None]
        if router is None:
            x_B1D, cache = model.hidden(tok_B1, pos_B1, kv_valid_BS, cache, slot)
        else:  # pre-gate the token, then run the backbone with that expert
            route_B1, router_cache = _router_route(router, router_state, tok_B1, pos_B1, kv_valid_BS, cache[1],
                                                   slot)
            missing = _missing_expert(model, route_B1, ~done_B[:, None])
            x_B1D, backbone_cache = model.hidden(tok_B1, pos_B1, kv_valid_BS, cache[0], slot, route_B1)
            cache = (backbone_cache, router_cache)
        logits_BV = model.head(x_B1D)[:, 0, :]
        key, out_BY, done_B, counts_B, tok_B = emit(t, logits_BV, key, out_BY, done_B, counts_B)
        return t + 1, tok_B, cache, kv_valid_BS, key, done_B, out_BY, counts_B, missing

    carry = (jnp.int32(1), tok_B, cache, kv_valid_BS, key, done_B, out_BY, counts_B, jnp.int32(-1))
    carry = jax.lax.while_loop(cond, body, carry)
    return carry[6], carry[7], carry[8], carry[2]
