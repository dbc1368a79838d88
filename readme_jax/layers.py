"""Pure functions shared by the dense model, the MoE model and the router: RMSNorm, RoPE, attention.

Numerics follow HF transformers' Llama: norms and softmax in fp32, RoPE with the rotate-half
convention, logits in fp32.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from readme_jax.config import LlamaConfig

NEG_INF = -1e30  # finite: a fully masked row (a left-pad query) gives a uniform, not NaN, softmax


def rms_norm(x_BLD, w_D, eps: float):
    """RMSNorm in fp32, cast back to the input dtype before the weight (as HF does)."""
    x32 = x_BLD.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return w_D[None, None, :] * x32.astype(x_BLD.dtype)


def rope_inv_freq(head_dim: int, theta: float, rope_type: str = "default", factor: float = 1.0,
                  low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                  original_max_len: int = 8192):
    """Inverse frequencies [K/2] in fp32, including linear and Llama-3 frequency scaling."""
    inv = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if rope_type == "linear":
        inv = inv / factor
    elif rope_type == "llama3":
        # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
        wavelen = 2 * math.pi / inv
        low_wavelen = original_max_len / low_freq_factor
        high_wavelen = original_max_len / high_freq_factor
        scaled = jnp.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (original_max_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = jnp.where(medium, blended, scaled)
    return inv


def config_inv_freq(cfg: LlamaConfig):
    return rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_type, cfg.rope_factor,
                         cfg.rope_low_freq_factor, cfg.rope_high_freq_factor, cfg.rope_original_max_len)


def rope_cos_sin(pos_BL, inv_freq):
    """cos and sin [B, L, K] in fp32 for integer positions."""
    angles = pos_BL.astype(jnp.float32)[:, :, None] * inv_freq[None, None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x_BLHK, cos_BLK, sin_BLK):
    """Rotate-half RoPE (HF convention: the two halves of each head are the pair coordinates)."""
    half = x_BLHK.shape[-1] // 2
    x1, x2 = x_BLHK[..., :half], x_BLHK[..., half:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    cos, sin = cos_BLK[:, :, None, :], sin_BLK[:, :, None, :]
    out = x_BLHK.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin
    return out.astype(x_BLHK.dtype)


def attention(q_BLHK, k_BGSK, v_BGSK, mask_BLS, scale: float):
    """Grouped-query attention of L queries over S keys; fp32 scores and softmax.

    Query heads are grouped as [G, Q] with Q = H // G consecutive heads per KV head (HF layout).
    """
    B, L, H, K = q_BLHK.shape
    G = k_BGSK.shape[1]
    q_BLGQK = q_BLHK.reshape(B, L, G, H // G, K)
    scores = jnp.einsum("BLGQK,BGSK->BGQLS", q_BLGQK, k_BGSK,
                        preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask_BLS[:, None, None, :, :], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_BGSK.dtype)
    out_BLGQK = jnp.einsum("BGQLS,BGSK->BLGQK", probs, v_BGSK)
    return out_BLGQK.reshape(B, L, H, K)


@dataclasses.dataclass(frozen=True)
class PackedWrite:
    """Where the tokens of a packed row (several prompts end to end, B == 1) go in a [B', G, S, K] cache."""

    row_T: jax.Array  # int32 cache row of each packed token; out of range (>= B') for padding: dropped
    slot_T: jax.Array  # int32 cache slot of each packed token


jax.tree_util.register_dataclass(PackedWrite, data_fields=["row_T", "slot_T"], meta_fields=[])


@dataclasses.dataclass(frozen=True)
class RowWrite:
    """Where B sequences of a shared [R, G, S, K] cache write their L new tokens (the serving engine's layout:
    one cache row per live sequence, each at its own length).

    Attention reads only the first ``window`` slots of each row (a static bucket covering the longest row of
    the batch), gathered into [B, G, window, K]; the new entries go into that window and, scattered, into the
    cache. Rows out of range (>= R, batch padding) and positions out of range (>= S, token padding) are
    dropped from every write.
    """

    rows_B: jax.Array  # int32 cache row of each sequence
    pos_BL: jax.Array  # int32 cache slot (= position) of each new token
    window: int  # static


jax.tree_util.register_dataclass(RowWrite, data_fields=["rows_B", "pos_BL"], meta_fields=["window"])


def row_mask(pos_BL, window: int):
    """[B, L, window]: the token at position q sees slots s <= q of its own row (``RowWrite``'s causal mask)."""
    return jnp.arange(window)[None, None, :] <= pos_BL[:, :, None]


def write_kv(kv, k_BGLK, v_BGLK, write_index):
    """Keys/values to attend over, and the new cache: the L new entries written at ``write_index``.

    Without a cache (``kv is None``) the new keys/values are all there is and no cache is returned. With a
    ``PackedWrite`` the packed row attends over its own new keys (the caller's mask keeps prompts apart) and
    each token's key/value is scattered to its own cache row and slot. With a ``RowWrite`` each sequence attends
    over its own row's window, the new entries included.
    """
    if kv is None:
        return k_BGLK, v_BGLK, None
    if isinstance(write_index, RowWrite):
        rows_B, pos_BL, W = write_index.rows_B, write_index.pos_BL, write_index.window
        out = []
        for cache, new_BGLK in zip(kv, (k_BGLK, v_BGLK)):
            # Write first, then read the window from the written cache: the gather then depends on the scatter,
            # so XLA updates the donated cache in place (reading the old cache beside the write made it copy
            # the whole cache every step: measured 0.6 s per decode step for 16 rows x 2048 slots).
            cache = cache.at[rows_B[:, None], :, pos_BL].set(new_BGLK.transpose(0, 2, 1, 3).astype(cache.dtype),
                                                             mode="drop")
            out.append((jnp.take(cache[:, :, :W], rows_B, axis=0, mode="clip"), cache))
        (k_win, k_new), (v_win, v_new) = out
        return k_win, v_win, (k_new, v_new)
    if isinstance(write_index, PackedWrite):
        at = (write_index.row_T, slice(None), write_index.slot_T)
        k_new = kv[0].at[at].set(k_BGLK[0].transpose(1, 0, 2).astype(kv[0].dtype), mode="drop")
        v_new = kv[1].at[at].set(v_BGLK[0].transpose(1, 0, 2).astype(kv[1].dtype), mode="drop")
        return k_BGLK, v_BGLK, (k_new, v_new)
    at = (0, 0, write_index, 0)
    k_BGSK = jax.lax.dynamic_update_slice(kv[0], k_BGLK.astype(kv[0].dtype), at)
    v_BGSK = jax.lax.dynamic_update_slice(kv[1], v_BGLK.astype(kv[1].dtype), at)
    return k_BGSK, v_BGSK, (k_BGSK, v_BGSK)


def causal_mask(q_slot_L, kv_valid_BS):
    """Query at cache slot q may see key slot s when s <= q and slot s holds a real token."""
    S = kv_valid_BS.shape[-1]
    visible_LS = jnp.arange(S)[None, :] <= q_slot_L[:, None]
    return visible_LS[None, :, :] & kv_valid_BS[:, None, :]
