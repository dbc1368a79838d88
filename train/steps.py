"""The jitted training steps: pure functions of (graphdef, state, batch) built once per run.

* Teacher: the backbone's parameters with all-ones neuron masks (i.e. run dense) give the distillation
  scores inside its forward, per micro-batch; the trainer caches them per block while the teacher is fixed.
* Router stage: the distillation loss of the router's logits against those scores; only the router moves.
* Expert stage: the frozen router pre-gates the batch (argmax), the masked-dense MoE runs under those
  routes, and the language-model loss (or KL to the dense teacher: ``expert_loss`` kd / mix) moves the
  trainable backbone parameters (the MLPs, or all of them).

A step takes a batch [A, b, L] of A micro-batches, accumulates gradients with ``lax.scan`` (one compiled
micro-step, so memory is that of b sequences), then applies one AdamW update. The learning rate is a traced
argument so the host schedule never recompiles. Parameters and optimizer states are donated.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from readme_jax.errors import ReadmeJaxError
from readme_jax.moe import with_masked_compute
from readme_jax.trees import leaf_name
from train import losses

MLP_NAMES = ("w_gate_DF", "w_up_DF", "w_down_FD")  # the masked form's MLP: what expert_params="experts" trains
# Leaves only the sliced form has (readme_jax.moe): routed slots, per-slot or stacked, and the permanent neurons.
SLICED_MLP_NAMES = ("w_gate_up_D2X", "w_down_XD", "w_gate_CDX", "w_up_CDX", "w_down_CXD", "w_gate_up_D2R",
                    "w_down_RD")


def check_masked_backbone(params) -> None:
    """Training runs the masked-dense MoE only; anything else is refused before a step is built.

    The teacher is the backbone run dense through all-ones neuron masks, and neurons shared by several experts
    stay weight-tied only in the masked form. A sliced model has neither, and ``expert_params="experts"``
    would find none of ``MLP_NAMES`` in it, so its expert stage would silently train nothing.
    """
    names = {leaf_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    if names & set(SLICED_MLP_NAMES):
        raise ReadmeJaxError("training needs the masked form of the MoE, got the sliced form (leaves "
                             f"{'/'.join(sorted(names & set(SLICED_MLP_NAMES)))}); build the backbone with "
                             "form='masked'")
    missing = [n for n in MLP_NAMES if n not in names]
    if missing:
        raise ReadmeJaxError(f"the backbone has no {', '.join(missing)}: not a masked-form Read-ME MoE")


def decay_mask(params):
    """AdamW weight decay on matrices only: RMSNorm weights and biases are exempt (as the reference code does)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: not (leaf_name(p).endswith("norm_D") or leaf_name(p).startswith("b_")), params)


def make_optimizer(weight_decay: float, grad_clip: float, params):
    """AdamW without its learning rate (applied by the step, see ``apply_updates``), with global-norm clipping."""
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    parts += [optax.scale_by_adam(), optax.add_decayed_weights(weight_decay, mask=decay_mask(params))]
    return optax.chain(*parts)


def apply_updates(tx, grads, opt_state, params, lr):
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: (p - lr * u).astype(p.dtype), params, updates)
    return params, opt_state


def cast_compute(tree, dtype):
    """Float leaves cast to the compute dtype (bf16 option); master weights stay fp32 outside the step."""
    if dtype == jnp.float32:
        return tree
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Static facts the steps close over."""

    distill: str
    kl_tau: float
    kl_direction: str
    k: int  # neurons per expert (the teacher's top-k size)
    n_layers: int
    n_specific: int  # neurons in each expert-specific set (reference form)
    compute_dtype: str = "float32"
    remat: bool = False  # recompute each block's insides in the backward pass (readme_jax.model.rematerialised)
    expert_loss: str = "lm"  # train.losses.expert_loss: lm | kd | mix
    kd_weight: float = 0.5

    @property
    def uses_teacher(self) -> bool:
        """Whether the expert step runs the dense teacher (and takes its parameters and all-ones masks)."""
        return self.expert_loss != "lm"


def dense_teacher(backbone_gd, teacher_params, ones_masks):
    """The backbone run dense: all-ones neuron masks, computed by mask whatever the run's ``mlp_compute`` (a
    gathered MLP keeps k neurons per expert, not the d_ff of an all-ones mask)."""
    return with_masked_compute(nnx.merge(backbone_gd, teacher_params, ones_masks), "mask")


def teacher_targets(spec: StepSpec, backbone_gd, teacher_params, ones_masks, tokens_BL, masks_NEF, permanent_NF):
    """(scores [Z, B, L, E] for the loss, oracle label [B, L]) from the teacher run dense, no gradient.

    Z = 1 for the paper form (Eq. 4 needs only the layer-summed overlap) and Z = N for the reference form
    (one target per layer). The label is the issue's oracle: argmax of the layer-summed top-k overlap.
    """
    teacher = dense_teacher(backbone_gd, cast_compute(teacher_params, jnp.dtype(spec.compute_dtype)), ones_masks)
    B, L = tokens_BL.shape
    scores, layer = [], iter(range(masks_NEF.shape[0]))
    overlap_BLE = jnp.zeros((B, L, masks_NEF.shape[1]), jnp.float32)

    def probe(h_BLF):
        nonlocal overlap_BLE
        n = next(layer)
        overlap_BLE = overlap_BLE + losses.topk_overlap(h_BLF, masks_NEF[n], spec.k)
        if spec.distill == "reference":
            scores.append(losses.layer_scores("reference", h_BLF, masks_NEF[n], spec.k, permanent_NF[n],
                                              spec.n_specific))

    teacher.hidden(tokens_BL, jnp.broadcast_to(jnp.arange(L), (B, L)), jnp.ones((B, L), bool),
                   route=jnp.zeros((B, L), jnp.int32), probe=probe)
    scores_ZBLE = overlap_BLE[None] if spec.distill == "paper" else jnp.stack(scores)
    return jax.lax.stop_gradient(scores_ZBLE), jnp.argmax(overlap_BLE, axis=-1).astype(jnp.int32)


def make_teacher_fn(spec: StepSpec, backbone_gd, out_sharding=None):
    """Jitted ``teacher_targets`` over one micro-batch (the router stage caches its outputs per block).

    ``out_sharding`` (replicated, in a multi-process run) lets every process read the targets it caches.
    """
    return jax.jit(lambda params, ones, tokens_BL, masks_NEF, permanent_NF: teacher_targets(
        spec, backbone_gd, params, ones, tokens_BL, masks_NEF, permanent_NF), out_shardings=out_sharding)


def distill_loss(spec: StepSpec, logits_BLE, scores_ZBLE, valid_BL):
    if spec.distill == "paper":
        return losses.paper_loss(logits_BLE, scores_ZBLE[0], valid_BL, spec.n_layers * spec.k, spec.kl_tau,
                                 spec.kl_direction)
    return losses.reference_loss(logits_BLE, scores_ZBLE, valid_BL)


def make_router_step(spec: StepSpec, router_gd, tx, shardings=None):
    """step(router_params, opt_state, tokens_ABL, valid_ABL, scores_AZBLE, label_ABL, lr)
    -> (router_params, opt_state, metrics)."""

    def step(router_params, opt_state, tokens_ABL, valid_ABL, scores_AZBLE, label_ABL, lr):
        def micro(grads, batch):
            tokens_BL, valid_BL, scores_ZBLE, label_BL = batch

            def loss_fn(params):
                router = nnx.merge(router_gd, cast_compute(params, jnp.dtype(spec.compute_dtype)))
                logits_BLE = router(tokens_BL, remat=spec.remat)
                return distill_loss(spec, logits_BLE, scores_ZBLE, valid_BL), logits_BLE

            (loss, logits_BLE), g = jax.value_and_grad(loss_fn, has_aux=True)(router_params)
            hit = jnp.sum((jnp.argmax(logits_BLE, axis=-1) == label_BL) & valid_BL)
            return jax.tree.map(jnp.add, grads, g), (loss, hit, jnp.sum(valid_BL))

        zeros = jax.tree.map(jnp.zeros_like, router_params)
        grads, (loss_A, hit_A, n_A) = jax.lax.scan(micro, zeros, (tokens_ABL, valid_ABL, scores_AZBLE, label_ABL))
        A = tokens_ABL.shape[0]
        grads = jax.tree.map(lambda g: g / A, grads)
        router_params, opt_state = apply_updates(tx, grads, opt_state, router_params, lr)
        metrics = {"loss": loss_A.mean(), "router_acc": hit_A.sum() / jnp.maximum(n_A.sum(), 1),
                   "grad_norm": optax.tree.norm(grads)}
        return router_params, opt_state, metrics

    return _jit(step, shardings, donate=(0, 1))


def make_expert_step(spec: StepSpec, router_gd, backbone_gd, tx, shardings=None):
    """step(trainable, opt_state, frozen, masks, router_params, tokens_ABL, valid_ABL, lr[, teacher, ones_masks])
    -> (trainable, opt_state, metrics). The last two (the teacher's parameters, and all-ones masks that run it
    dense) are arguments only when ``spec.uses_teacher``."""

    def step(trainable, opt_state, frozen, masks, router_params, tokens_ABL, valid_ABL, lr, *teacher_args):
        dt = jnp.dtype(spec.compute_dtype)

        def micro(grads, batch):
            tokens_BL, valid_BL = batch
            router = nnx.merge(router_gd, cast_compute(router_params, dt))
            route_BL = jnp.argmax(router(tokens_BL), axis=-1)
            teacher_BLV = None
            if spec.uses_teacher:
                teacher, ones = teacher_args
                dense = dense_teacher(backbone_gd, cast_compute(teacher, dt), ones)
                teacher_BLV = jax.lax.stop_gradient(dense(tokens_BL, route=route_BL))

            def loss_fn(train_params):
                params = nnx.merge_state(cast_compute(train_params, dt), cast_compute(frozen, dt))
                model = nnx.merge(backbone_gd, params, masks)
                logits_BLV = model(tokens_BL, route=route_BL, remat=spec.remat)
                return losses.expert_loss(spec.expert_loss, spec.kd_weight, logits_BLV, tokens_BL, valid_BL,
                                          teacher_BLV)

            loss, g = jax.value_and_grad(loss_fn)(trainable)
            usage_E = jnp.bincount(route_BL.reshape(-1), length=masks_NEF_width(masks))
            return jax.tree.map(jnp.add, grads, g), (loss, usage_E)

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        grads, (loss_A, usage_AE) = jax.lax.scan(micro, zeros, (tokens_ABL, valid_ABL))
        A = tokens_ABL.shape[0]
        grads = jax.tree.map(lambda g: g / A, grads)
        trainable, opt_state = apply_updates(tx, grads, opt_state, trainable, lr)
        metrics = {"loss": loss_A.mean(), "expert_usage": usage_AE.sum(0), "grad_norm": optax.tree.norm(grads)}
        return trainable, opt_state, metrics

    return _jit(step, shardings, donate=(0, 1))


def masks_NEF_width(masks) -> int:
    """Number of experts E, read from the first layer's neuron mask [E, F] (static shape)."""
    return jax.tree.leaves(masks)[0].shape[0]


def _jit(fn, shardings, donate):
    if shardings is None:
        return jax.jit(fn, donate_argnums=donate)
    in_shardings, out_shardings = shardings
    return jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate)
