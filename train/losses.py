"""Training losses: router distillation (paper and reference-code forms) and the language-model loss.

Both distillation forms compare ONE router prediction per token (it serves every layer) with a per-layer
target built from the dense teacher's MLP activations at the same position (t <-> t, as the reference code
aligns them: the router sees ids <= t, the expert it picks processes token t).

* ``paper`` (Eq. 4): the target distribution is softmax over experts of the overlap between the teacher's
  top-k neuron set and each expert's neuron set. As typeset the overlaps are raw counts, which for real
  models (thousands of neurons, tens of layers) make the softmax one-hot and the loss scale huge; we divide
  the layer-summed overlap by ``N * k`` (a fraction in [0, 1]) and by a temperature ``tau``
  (``tau = 1 / (N * k)`` recovers the raw counts exactly). The KL direction is selectable: ``"router_target"``
  is Eq. 4 as typeset, KL(router || target); ``"target_router"`` is the forward KL (cross-entropy to the soft
  target, what the reference code's soft term computes).
* ``reference`` (train_red.py): per layer, a graded indicator of the signed activation being in the top
  {1, 4/5, 3/5, 2/5, 1/5} x N_l (N_l = the size of the expert-specific sets), dotted with each expert's
  specific set (permanent neurons excluded), centred by its global mean and scaled x10; the loss is
  0.75 * CE(argmax target, label smoothing 0.5) + 0.25 * soft CE, summed over layers.

Teacher-side quantities are produced inside the teacher forward (``teacher_targets``) as [N, B, L, E]
per-layer scores, so the [N, B, L, F] activations never materialise.
"""

import jax
import jax.numpy as jnp

from readme_jax.oracle import kth_largest, next_token_nll, topk_overlap

DISTILL_FORMS = ("paper", "reference")
KL_DIRECTIONS = ("router_target", "target_router")
REFERENCE_FRACTIONS = (5, 4, 3, 2, 1)  # graded thresholds at c/5 of N_l (c = 5 is N_l - 1 in the code)


def graded_scores(h_BLF, specific_EF, n_specific: int):
    """The reference code's per-layer expert scores [B, L, E] (before centring).

    f = sum over thresholds c of 1[a is among the top-c signed activations] / (3 * N_l), then f . mask_e.
    ``kth_largest`` bisects on values, so ">= its threshold" marks the top-c set up to float ties.
    """
    a_BLF = h_BLF.astype(jnp.float32)
    f_BLF = jnp.zeros_like(a_BLF)
    for c in REFERENCE_FRACTIONS:
        count = n_specific - 1 if c == 5 else (c * n_specific) // 5
        if count < 1:  # the code's threshold at index 0 keeps no neuron
            continue
        # kth_largest expects non-negative values (its lower bracket starts at 0): shift by the row minimum.
        shifted_BLF = a_BLF - jnp.min(a_BLF, axis=-1, keepdims=True)
        f_BLF = f_BLF + (shifted_BLF >= kth_largest(shifted_BLF, count)).astype(jnp.float32)
    f_BLF = f_BLF / (3.0 * n_specific)
    return jnp.einsum("BLF,EF->BLE", f_BLF, specific_EF.astype(jnp.float32))


def layer_scores(form: str, h_BLF, masks_EF, k: int, permanent_F=None, n_specific: int = 0):
    """Per-layer teacher scores [B, L, E] for ``form``: top-k overlap counts, or graded reference scores."""
    if form == "paper":
        return topk_overlap(h_BLF, masks_EF, k)
    specific_EF = masks_EF & ~permanent_F[None, :]
    return graded_scores(h_BLF, specific_EF, n_specific)


def paper_loss(logits_BLE, overlap_BLE, valid_BL, scale: int, tau: float, direction: str):
    """Eq. 4 with normalised overlaps (see module doc); mean over valid tokens.

    ``overlap_BLE`` is the overlap summed over layers and ``scale`` = N * k its largest possible value.
    """
    target_logits_BLE = overlap_BLE / (scale * tau)
    log_q_BLE = jax.nn.log_softmax(target_logits_BLE, axis=-1)
    log_p_BLE = jax.nn.log_softmax(logits_BLE.astype(jnp.float32), axis=-1)
    if direction == "router_target":
        kl_BL = jnp.sum(jnp.exp(log_p_BLE) * (log_p_BLE - log_q_BLE), axis=-1)
    else:
        kl_BL = jnp.sum(jnp.exp(log_q_BLE) * (log_q_BLE - log_p_BLE), axis=-1)
    return _masked_mean(kl_BL, valid_BL)


def reference_loss(logits_BLE, scores_NBLE, valid_BL, smoothing: float = 0.5):
    """train_red.py's loss: per layer 0.75 * smoothed CE to the argmax + 0.25 * soft CE, summed over layers."""
    E = logits_BLE.shape[-1]
    w_BL = valid_BL.astype(jnp.float32)
    # The code centres by the mean over every entry of the layer's batch; padding must not enter it.
    count = jnp.maximum(w_BL.sum(), 1.0) * E
    mean_N = jnp.einsum("NBLE,BL->N", scores_NBLE, w_BL) / count
    dist_NBLE = (scores_NBLE - mean_N[:, None, None, None]) * 10.0
    log_p_BLE = jax.nn.log_softmax(logits_BLE.astype(jnp.float32), axis=-1)
    hard_NBLE = jax.nn.one_hot(jnp.argmax(dist_NBLE, axis=-1), E)
    smooth_NBLE = hard_NBLE * (1.0 - smoothing) + smoothing / E
    ce_NBL = -jnp.sum(smooth_NBLE * log_p_BLE[None], axis=-1)
    soft_NBL = -jnp.sum(jax.nn.softmax(dist_NBLE, axis=-1) * log_p_BLE[None], axis=-1)
    per_layer_N = jax.vmap(lambda x: _masked_mean(x, valid_BL))(0.75 * ce_NBL + 0.25 * soft_NBL)
    return per_layer_N.sum()


def lm_loss(logits_BLV, tokens_BL, valid_BL):
    """Mean next-token cross-entropy over positions whose target token is real."""
    return _masked_mean(next_token_nll(logits_BLV, tokens_BL), valid_BL[:, 1:])


EXPERT_LOSSES = ("lm", "kd", "mix")


def kd_loss(logits_BLV, teacher_logits_BLV, valid_BL):
    """Forward KL(teacher || student) of the next-token distributions, in nats, averaged over the positions
    ``lm_loss`` averages (those whose next token is real): the student learns the dense model's whole
    distribution instead of only the text's next token."""
    t_BLV = jax.nn.log_softmax(teacher_logits_BLV[:, :-1].astype(jnp.float32), axis=-1)
    s_BLV = jax.nn.log_softmax(logits_BLV[:, :-1].astype(jnp.float32), axis=-1)
    kl_BL = jnp.sum(jnp.exp(t_BLV) * (t_BLV - s_BLV), axis=-1)
    return _masked_mean(kl_BL, valid_BL[:, 1:])


def expert_loss(form: str, kd_weight: float, logits_BLV, tokens_BL, valid_BL, teacher_logits_BLV=None):
    """The expert stage's loss: ``lm`` (the text), ``kd`` (the dense teacher) or ``mix``
    ((1 - kd_weight) * lm + kd_weight * kd)."""
    if form == "lm":
        return lm_loss(logits_BLV, tokens_BL, valid_BL)
    kd = kd_loss(logits_BLV, teacher_logits_BLV, valid_BL)
    if form == "kd":
        return kd
    return (1 - kd_weight) * lm_loss(logits_BLV, tokens_BL, valid_BL) + kd_weight * kd


def _masked_mean(x, valid):
    w = valid.astype(jnp.float32)
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)
