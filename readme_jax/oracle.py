"""Oracle routing and the teacher pass (Read-ME §4.1's target, paper form).

For each token, run the dense teacher and take, in every layer n, the k most active MLP neurons
(|act(gate(x)) * up(x)|, k = expert width). The per-layer oracle expert is the expert whose neuron set
overlaps that top-k set most; the final oracle expert maximises the overlap summed over layers. The
overlap counts are also the router-distillation target. Domain-label routing (every token of a
document goes to its domain's expert) is the second baseline.

One jitted teacher pass also returns the dense model's next-token NLL, so dense perplexity and oracle
routes come from the same forward.
"""

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx


def kth_largest(a_BLF, k: int, iters: int = 30):
    """Per-row threshold t with exactly-or-just-over k entries >= t, by bisection on the value.

    ``lax.top_k`` sorts each row; on the CPU that costs ~6x more than 30 rounds of compare-and-count.
    """
    lo = jnp.zeros(a_BLF.shape[:-1] + (1,), a_BLF.dtype)
    hi = jnp.max(a_BLF, axis=-1, keepdims=True)

    def step(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) / 2
        enough = jnp.sum(a_BLF >= mid, axis=-1, keepdims=True) >= k
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    return jax.lax.fori_loop(0, iters, step, (lo, hi))[0]


def topk_overlap(h_BLF, masks_EF, k: int):
    """How many of each token's k most active neurons lie in each expert's set: [B, L, E] fp32."""
    a_BLF = jnp.abs(h_BLF.astype(jnp.float32))
    top_BLF = (a_BLF >= kth_largest(a_BLF, k)).astype(jnp.float32)
    return jnp.einsum("BLF,EF->BLE", top_BLF, masks_EF.astype(jnp.float32))


def next_token_nll(logits_BLV, tokens_BL):
    """NLL of tokens[1:] given the prefix: [B, L-1] fp32."""
    logp_BLV = jax.nn.log_softmax(logits_BLV[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp_BLV, tokens_BL[:, 1:, None], axis=-1)[..., 0]


def _teacher(graphdef, state, tokens_BL, masks_NEF, k, pos_BL, mask_BLS):
    """Dense logits [B, L, V] and the top-k overlap of every layer's MLP activations [N, B, L, E]."""
    model = nnx.merge(graphdef, state)
    B, L = tokens_BL.shape
    overlaps, layer = [], iter(range(masks_NEF.shape[0]))

    def probe(h_BLF):
        overlaps.append(topk_overlap(h_BLF, masks_NEF[next(layer)], k))

    if pos_BL is None:
        pos_BL = jnp.broadcast_to(jnp.arange(L), (B, L))
    x_BLD, _ = model.hidden(tokens_BL, pos_BL, jnp.ones((B, L), bool), probe=probe, mask_BLS=mask_BLS)
    return model.head(x_BLD), jnp.stack(overlaps)


@partial(jax.jit, static_argnums=(0, 4))
def teacher_step(graphdef, state, tokens_BL, masks_NEF, k: int, pos_BL=None, mask_BLS=None):
    """Dense teacher pass: (nll [B, L-1], overlap per layer [N, B, L, E]). ``pos_BL`` and ``mask_BLS``
    replace the causal positions and mask (packed prefix trees, ``readme_jax.tasks.score``); the nll is then
    meaningless and only the overlaps are used."""
    logits_BLV, overlap_NBLE = _teacher(graphdef, state, tokens_BL, masks_NEF, k, pos_BL, mask_BLS)
    return next_token_nll(logits_BLV, tokens_BL), overlap_NBLE


@partial(jax.jit, static_argnums=(0, 4))
def teacher_logp(graphdef, state, tokens_BL, masks_NEF, k: int):
    """One dense pass for held-out evaluation: (next-token log-probabilities for tokens[1:] [B, L-1, V] fp32,
    as ``dense_logp`` gives them, and the overlaps of ``teacher_step``)."""
    logits_BLV, overlap_NBLE = _teacher(graphdef, state, tokens_BL, masks_NEF, k, None, None)
    return jax.nn.log_softmax(logits_BLV[:, :-1].astype(jnp.float32), axis=-1), overlap_NBLE


@partial(jax.jit, static_argnums=0)
def routed_nll(graphdef, state, tokens_BL, expert_id_BL):
    """Next-token NLL [B, L-1] of a MoE model under the given routes."""
    logits = nnx.merge(graphdef, state)(tokens_BL, route=expert_id_BL)
    return next_token_nll(logits, tokens_BL)


@partial(jax.jit, static_argnums=0)
def dense_logp(graphdef, state, tokens_BL):
    """The dense model's next-token log-probabilities for tokens[1:]: [B, L-1, V] fp32."""
    logits_BLV = nnx.merge(graphdef, state)(tokens_BL)
    return jax.nn.log_softmax(logits_BLV[:, :-1].astype(jnp.float32), axis=-1)


@partial(jax.jit, static_argnums=0)
def routed_vs_dense(graphdef, state, tokens_BL, expert_id_BL, dense_logp_BLV):
    """A routed (or dense, ``expert_id_BL`` None) model against the dense one, per next-token position
    [B, L-1]: (its NLL, whether its top-1 token is the dense model's, KL(dense || model) in nats)."""
    model = nnx.merge(graphdef, state)
    logits_BLV = model(tokens_BL) if expert_id_BL is None else model(tokens_BL, route=expert_id_BL)
    logp_BLV = jax.nn.log_softmax(logits_BLV[:, :-1].astype(jnp.float32), axis=-1)
    nll_BL = -jnp.take_along_axis(logp_BLV, tokens_BL[:, 1:, None], axis=-1)[..., 0]
    agree_BL = jnp.argmax(logp_BLV, axis=-1) == jnp.argmax(dense_logp_BLV, axis=-1)
    kl_BL = jnp.sum(jnp.exp(dense_logp_BLV) * (dense_logp_BLV - logp_BLV), axis=-1)
    return nll_BL, agree_BL, kl_BL


def oracle_choices(overlap_NBLE):
    """(per-layer choices [N, B, L], summed-over-layers choice [B, L]); ties go to the lower index."""
    return jnp.argmax(overlap_NBLE, axis=-1), jnp.argmax(overlap_NBLE.sum(axis=0), axis=-1)
