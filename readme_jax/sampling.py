"""Next-token sampling: greedy, temperature, top-k, top-p (nucleus). Runs inside the jitted decode loop.

``top_k`` and ``top_p`` are traced scalars (0 and 1.0 disable them), so changing them never recompiles.
"""

import jax
import jax.numpy as jnp

from readme_jax.layers import NEG_INF


def sample(logits_BV, key, temperature, top_k, top_p, greedy: bool):
    """Token ids [B]. ``greedy`` is static; the other knobs are traced."""
    if greedy:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logits_BV = logits_BV.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    V = logits_BV.shape[-1]
    # top-k: keep logits >= the k-th largest
    k_index = jnp.clip(jnp.where(top_k > 0, top_k, V) - 1, 0, V - 1)
    kth_B1 = jnp.take_along_axis(sorted_BV, jnp.broadcast_to(k_index, (logits_BV.shape[0], 1)), axis=-1)
    # top-p: keep the smallest prefix of the sorted distribution whose mass reaches top_p
    probs_BV = jax.nn.softmax(jnp.where(sorted_BV >= kth_B1, sorted_BV, NEG_INF), axis=-1)
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    last_kept_B1 = jnp.sum(mass_before_BV < top_p, axis=-1, keepdims=True) - 1
    pth_B1 = jnp.take_along_axis(sorted_BV, jnp.clip(last_kept_B1, 0, V - 1), axis=-1)
    keep_BV = (logits_BV >= kth_B1) & (logits_BV >= pth_B1)
    return jax.random.categorical(key, jnp.where(keep_BV, logits_BV, NEG_INF), axis=-1).astype(jnp.int32)
